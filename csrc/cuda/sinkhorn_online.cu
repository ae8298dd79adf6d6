// The online backend: forward and backward without an m x n array. Every pass recomputes the
// costs C_rc = c(a_r, o_c) of its rows a_r (one thread each) against the points o_c of the
// other cloud, which a block stages through shared memory a tile of kTileColumns points and
// a chunk of kChunk coordinates at a time: the tile's squared distances add up in registers
// chunk by chunk, so that neither shared memory nor registers grow with d. A thread reads its
// own point once where it has a single chunk (d <= kChunk), a chunk per tile otherwise.
//
// Forward: one launch per half-step, the running log-sum-exp of core/softmin.h
// (OnlineSoftmin), as the tiled strategy but on recomputed costs.
//
// Backward: the replay of the tiled strategy (core/softmin.h adjoint_term), with dW/dC
// contracted at once into the gradients of the points: dW/da_r = sum_c H_rc (a_r - o_c),
// H = dW/dC k(C) (core/cost.h). A pass owns the points of one cloud and writes only their
// sums, so there are no atomics and the result does not depend on scheduling:
//   - the row term, a reverse half-step over this cloud's rows: the row's adjoint, and its
//     terms of dW/dC summed along the row;
//   - the column term, the reverse half-step over the other cloud's rows, its terms of dW/dC
//     summed along their columns, this cloud's points (each term recomputed with the roles of
//     the two clouds swapped: the exponent of core/softmin.h needs only the row's s and w and
//     the column's h and adj).
// The column term of one reverse half-step shares its pairs with the row term of the next
// (the same cloud owns both), so both run in one pass: 2 passes per level, not 4.
//
// Memory: the op's workspace of O(B (m + n)) (f, g, the column costs; phi, psi) and, per
// block, (kTileColumns kChunk + kTileColumns) values of shared memory in the forward,
// (kTileColumns kChunk + 4 kTileColumns) in the backward: 1.5 KiB in float64.
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/sinkhorn_cuda.h"

namespace sinkhorn::cuda {
namespace {

constexpr int kTileColumns = 16;  // points of the other cloud per tile
constexpr int kChunk = 8;         // coordinates per chunk

// The two clouds of a pass: its rows' points and the other cloud's, its columns.
template <typename T>
struct Clouds {
  const T* points = nullptr;        // (B, rows, d)
  const T* other_points = nullptr;  // (B, cols, d)
  int64_t d = 0;
  Cost cost = Cost::kSqEuclidean;
};

// tile[c kChunk + k] = coordinate k0 + k of the point c0 + c of o (zero beyond count and d,
// which adds nothing to a distance or to a contraction).
template <typename T>
__device__ __forceinline__ void stage_chunk(const T* o, int64_t c0, int count, int d, int k0,
                                            T* tile) {
  for (int e = threadIdx.x; e < kTileColumns * kChunk; e += kThreads) {
    const int c = e / kChunk, k = k0 + e % kChunk;
    tile[e] = c < count && k < d ? o[(c0 + c) * d + k] : T(0);
  }
}

// own[k] = coordinate k0 + k of the point a (zero beyond d, and for an inactive row: null a).
template <typename T>
__device__ __forceinline__ void load_chunk(const T* a, int d, int k0, T (&own)[kChunk]) {
  SK_UNROLL
  for (int k = 0; k < kChunk; ++k) own[k] = a != nullptr && k0 + k < d ? a[k0 + k] : T(0);
}

// dist[c] = the squared distance from the row's point a to the points c < count of the tile
// starting at c0 (core/cost.h squared_distance, coordinate after coordinate in its order).
// The chunks pass through tile in turn; own holds the row's chunk, loaded here unless d <=
// kChunk (then the caller loads it once). stage_vectors() is run by the block with the first
// chunk, inside the same barriers, to stage the other side's vectors of the tile. On return
// tile and own hold the last chunk.
template <typename T, typename StageVectors>
__device__ __forceinline__ void tile_squared_distances(const T* a, const T* o, int64_t c0,
                                                       int count, int d, T (&own)[kChunk],
                                                       T* tile, T (&dist)[kTileColumns],
                                                       const StageVectors& stage_vectors) {
  SK_UNROLL
  for (int c = 0; c < kTileColumns; ++c) dist[c] = T(0);
  for (int k0 = 0; k0 < d; k0 += kChunk) {
    __syncthreads();  // the block is done reading the previous chunk and vectors
    stage_chunk(o, c0, count, d, k0, tile);
    if (k0 == 0) stage_vectors();
    if (d > kChunk) load_chunk(a, d, k0, own);
    __syncthreads();
    SK_UNROLL
    for (int k = 0; k < kChunk; ++k) {
      if (k0 + k < d) {
        SK_UNROLL
        for (int c = 0; c < kTileColumns; ++c) {
          const T diff = own[k] - tile[c * kChunk + k];
          dist[c] += diff * diff;
        }
      }
    }
  }
}

template <typename T, bool WithExpectedCost>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    online_softmin_kernel(HalfStep<T> s, Clouds<T> clouds) {
  SK_DYNAMIC_SHARED(T, tile);  // kTileColumns x kChunk coordinates, then kTileColumns of h
  T* h_tile = tile + kTileColumns * kChunk;
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const bool active = r < s.rows;
  const int d = static_cast<int>(clouds.d);
  const T inv_eps = T(1) / s.eps;
  for (int64_t b = blockIdx.y; b < s.batch; b += gridDim.y) {
    const T* a = active ? clouds.points + (b * s.rows + r) * d : nullptr;
    const T* o = clouds.other_points + b * s.cols * d;
    T own[kChunk];
    if (d <= kChunk) load_chunk(a, d, 0, own);
    OnlineSoftmin<T, WithExpectedCost> acc;
    for (int64_t c0 = 0; c0 < s.cols; c0 += kTileColumns) {
      const int count = static_cast<int>(s.cols - c0 < kTileColumns ? s.cols - c0 : kTileColumns);
      T dist[kTileColumns];
      tile_squared_distances(a, o, c0, count, d, own, tile, dist, [&] {
        const int c = threadIdx.x;  // the column this thread stages
        if (c < count) h_tile[c] = s.h[b * s.cols + c0 + c];
      });
      SK_UNROLL
      for (int c = 0; c < kTileColumns; ++c) {
        if (c < count) acc.add(h_tile[c], cost_of_squared_distance(dist[c], clouds.cost), inv_eps);
      }
    }
    if (active) write_softmin(s, b, r, acc);
  }
}

template <typename T>
cudaError_t online_softmin_step(const HalfStep<T>& s, const Clouds<T>& clouds,
                                cudaStream_t stream) {
  const dim3 grid(blocks_for(s.rows, kThreads), grid_dim(s.batch));
  const size_t shared = (kTileColumns * kChunk + kTileColumns) * sizeof(T);
  return s.expected_cost
             ? launch(online_softmin_kernel<T, true>, grid, dim3(kThreads), shared, stream, s,
                      clouds)
             : launch(online_softmin_kernel<T, false>, grid, dim3(kThreads), shared, stream, s,
                      clouds);
}

// What a pass of the backward computes of a term: nothing, a reverse half-step, or the
// terminal one (the adjoint of the g-update of level L, which holds the derivative of
// <C, P_L>). Types rather than an enum, so that ptxas reports name them.
struct NoTerm {};
struct PlainTerm {};
struct TerminalTerm {};

// One pass of the backward over the rows r of one cloud against the columns c of the other.
// The matrices of the steps are unused (the costs are recomputed) and so are their shapes:
// the pass's are batch, rows and cols.
template <typename T>
struct AdjointPass {
  Clouds<T> clouds;
  int64_t batch = 0, rows = 0, cols = 0;
  T eps = T(1);
  // The row term: a reverse half-step over these rows; its h and adj are the columns'.
  AdjointStep<T> row;
  // The column term: a reverse half-step over the other cloud's rows (these columns), whose
  // columns are these rows: its h and adj are the rows', its s and weights the columns'.
  AdjointStep<T> column;
  const T* grad_cost = nullptr;  // (B,), the incoming gradient of W_L
  // If set: (B, rows, d), += grad_cost[b] sum_c H_rc (a_r - o_c), H_rc = k(C_rc) times the
  // dW/dC_rc of both terms.
  T* grad = nullptr;
  // If set, the last pass to add to these rows' weight gradient: (B, rows), *= grad_cost[b].
  T* grad_weights = nullptr;
};

// dst[k0 + k] += factor grad[k] for k0 + k < d, and grad = 0.
template <typename T>
__device__ __forceinline__ void flush_chunk(T (&grad)[kChunk], T factor, int d, int k0, T* dst) {
  SK_UNROLL
  for (int k = 0; k < kChunk; ++k) {
    if (k0 + k < d) dst[k0 + k] += factor * grad[k];
    grad[k] = T(0);
  }
}

template <typename T, typename RowTerm, typename ColumnTerm>
__global__ void __launch_bounds__(kThreads, kMinTiledBlocks)
    online_adjoint_kernel(AdjointPass<T> p) {
  constexpr bool kWithRow = !std::is_same_v<RowTerm, NoTerm>;
  constexpr bool kWithColumn = !std::is_same_v<ColumnTerm, NoTerm>;
  // kTileColumns x kChunk coordinates, then for each column of the tile: h and adj of the row
  // term, s and w of the column term.
  SK_DYNAMIC_SHARED(T, tile);
  T* h_tile = tile + kTileColumns * kChunk;
  T* adj_tile = h_tile + kTileColumns;
  T* s_tile = adj_tile + kTileColumns;
  T* w_tile = s_tile + kTileColumns;
  const AdjointStep<T>& row = p.row;
  const AdjointStep<T>& column = p.column;
  const int64_t rows = p.rows, cols = p.cols;
  const int64_t r = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const bool active = r < rows;
  const int d = static_cast<int>(p.clouds.d);
  const int last_chunk = (d - 1) / kChunk * kChunk;
  const T inv_eps = T(1) / p.eps;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    // The row's own values: s and w in the row term, h and adj in the column term.
    const T s = active && kWithRow && row.s ? row.s[b * row.s_stride + r] : T(0);
    const T w = active && kWithRow && row.weights ? row.weights[b * rows + r] : T(1);
    const T h = active && kWithColumn ? column.h[b * rows + r] : T(0);
    const T adj = active && kWithColumn ? column.adj[b * rows + r] : T(0);
    const T* a = active ? p.clouds.points + (b * rows + r) * d : nullptr;
    const T* o = p.clouds.other_points + b * cols * d;
    T* grad_row = active && p.grad ? p.grad + (b * rows + r) * d : nullptr;
    const T factor = p.grad_cost[b];
    T own[kChunk];
    if (d <= kChunk) load_chunk(a, d, 0, own);
    T grad[kChunk];  // the row's gradient, a chunk of coordinates
    SK_UNROLL
    for (int k = 0; k < kChunk; ++k) grad[k] = T(0);
    T out = T(0);
    for (int64_t c0 = 0; c0 < cols; c0 += kTileColumns) {
      const int count = static_cast<int>(cols - c0 < kTileColumns ? cols - c0 : kTileColumns);
      T gk[kTileColumns];  // the squared distances, then H_rc
      tile_squared_distances(a, o, c0, count, d, own, tile, gk, [&] {
        const int c = threadIdx.x;  // the column this thread stages
        if (c >= count) return;
        const int64_t bc = b * cols + c0 + c;
        if (kWithRow) {
          h_tile[c] = row.h[bc];
          adj_tile[c] = row.adj[bc];
        }
        if (kWithColumn) {
          s_tile[c] = column.s ? column.s[b * column.s_stride + c0 + c] : T(0);
          w_tile[c] = column.weights ? column.weights[bc] : T(1);
        }
      });
      SK_UNROLL
      for (int c = 0; c < kTileColumns; ++c) {
        T g = T(0);  // dW/dC_rc
        if (c < count) {
          const T cost = cost_of_squared_distance(gk[c], p.clouds.cost);
          if (kWithRow) {
            out += adjoint_term<T, std::is_same_v<RowTerm, TerminalTerm>>(
                cost, h_tile[c], adj_tile[c], s, w, inv_eps, g);
          }
          if (kWithColumn) {
            adjoint_term<T, std::is_same_v<ColumnTerm, TerminalTerm>>(cost, h, adj, s_tile[c],
                                                                      w_tile[c], inv_eps, g);
          }
          g *= cost_slope(cost, p.clouds.cost);
        }
        gk[c] = g;
      }
      if (p.grad == nullptr) continue;  // the adjoints alone are wanted
      // grad += sum_c H_rc (a_r - o_c), chunk by chunk from the last one, which is staged.
      for (int k0 = last_chunk; k0 >= 0; k0 -= kChunk) {
        if (k0 != last_chunk) {
          __syncthreads();  // the block is done reading the previous chunk
          stage_chunk(o, c0, count, d, k0, tile);
          load_chunk(a, d, k0, own);
          __syncthreads();
        }
        SK_UNROLL
        for (int k = 0; k < kChunk; ++k) {
          if (k0 + k < d) {
            SK_UNROLL
            for (int c = 0; c < kTileColumns; ++c) {
              grad[k] += gk[c] * (own[k] - tile[c * kChunk + k]);
            }
          }
        }
        if (d > kChunk && active) flush_chunk(grad, factor, d, k0, grad_row);
      }
    }
    if (!active) continue;
    if (p.grad && d <= kChunk) flush_chunk(grad, factor, d, 0, grad_row);
    if (kWithRow) {
      if (row.out) row.out[b * rows + r] = out;
      if (row.grad_weights) row.grad_weights[b * rows + r] += p.eps * out;
    }
    if (p.grad_weights) p.grad_weights[b * rows + r] *= factor;
  }
}

template <typename RowTerm, typename ColumnTerm, typename T>
cudaError_t adjoint_pass(const AdjointPass<T>& p, cudaStream_t stream) {
  const dim3 grid(blocks_for(p.rows, kThreads), grid_dim(p.batch));
  const size_t shared = (kTileColumns * kChunk + 4 * kTileColumns) * sizeof(T);
  return launch(online_adjoint_kernel<T, RowTerm, ColumnTerm>, grid, dim3(kThreads), shared,
                stream, p);
}

}  // namespace

template <typename T>
cudaError_t online_forward(const SinkhornParams<T>& p, cudaStream_t stream) {
  const Clouds<T> x_against_y{p.x, p.y, p.d, p.cost}, y_against_x{p.y, p.x, p.d, p.cost};
  return run_iterations(
      p,
      [&](const HalfStep<T>& step, bool over_x) {
        return online_softmin_step(step, over_x ? x_against_y : y_against_x, stream);
      },
      stream);
}

// The passes, with G(l) the adjoint of the g-update of level l (over the rows i) and F(l)
// that of the f-update (over the rows j): over x the row term G(L); then for l = L..1, over
// y the row term F(l) with the column term G(l), and over x the column term F(l) with the
// row term G(l - 1) (none at l = 1). Each pass reads the adjoint that the one before wrote.
template <typename T>
cudaError_t online_backward(const SinkhornParams<T>& p, cudaStream_t stream) {
  const int64_t B = p.batch, m = p.m, n = p.n, d = p.d, L = p.iters;
  const Clouds<T> x_against_y{p.x, p.y, d, p.cost}, y_against_x{p.y, p.x, d, p.cost};
  SK_CUDA_TRY(begin_backward(
      p,
      [&](const HalfStep<T>& step, bool) { return online_softmin_step(step, y_against_x, stream); },
      stream));
  SK_CUDA_TRY(cudaMemsetAsync(p.grad_x, 0, B * m * d * sizeof(T), stream));
  if (p.grad_y) SK_CUDA_TRY(cudaMemsetAsync(p.grad_y, 0, B * n * d * sizeof(T), stream));

  AdjointPass<T> over_x, over_y;
  over_x.clouds = x_against_y;
  over_x.batch = B, over_x.rows = m, over_x.cols = n, over_x.eps = p.eps;
  over_x.grad_cost = p.grad_cost;
  over_x.grad = p.grad_x;
  over_y.clouds = y_against_x;
  over_y.batch = B, over_y.rows = n, over_y.cols = m, over_y.eps = p.eps;
  over_y.grad_cost = p.grad_cost;
  // A self-term (y is x): the gradient through the second argument is x's too.
  over_y.grad = p.x_is_y ? p.grad_x : p.grad_y;

  over_x.row = g_update_adjoint(p, L);
  SK_CUDA_TRY((adjoint_pass<TerminalTerm, NoTerm>(over_x, stream)));
  for (int64_t l = L; l >= 1; --l) {
    over_y.row = f_update_adjoint(p, l);
    over_y.column = g_update_adjoint(p, l);
    if (l == 1) over_y.grad_weights = p.grad_y_weights;
    SK_CUDA_TRY((l == L ? adjoint_pass<PlainTerm, TerminalTerm>(over_y, stream)
                        : adjoint_pass<PlainTerm, PlainTerm>(over_y, stream)));
    over_x.column = f_update_adjoint(p, l);
    if (l > 1) {
      // G(l - 1) reads g^{l-1}; F(l) here still reads f^l, the next F(l - 1) f^{l-1}.
      SK_CUDA_TRY(load_g(p, l - 1, stream));
      over_x.row = g_update_adjoint(p, l - 1);
      SK_CUDA_TRY((adjoint_pass<PlainTerm, PlainTerm>(over_x, stream)));
      SK_CUDA_TRY(load_f(p, l - 1, stream));
    } else {
      over_x.grad_weights = p.grad_x_weights;
      SK_CUDA_TRY((adjoint_pass<NoTerm, PlainTerm>(over_x, stream)));
    }
  }
  return cudaSuccess;
}

template cudaError_t online_forward<float>(const SinkhornParams<float>&, cudaStream_t);
template cudaError_t online_forward<double>(const SinkhornParams<double>&, cudaStream_t);
template cudaError_t online_backward<float>(const SinkhornParams<float>&, cudaStream_t);
template cudaError_t online_backward<double>(const SinkhornParams<double>&, cudaStream_t);

}  // namespace sinkhorn::cuda
