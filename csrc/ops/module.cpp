// An importable (empty) Python module: `import sinkhorn_ext._C` loads this library, whose
// static initialisers register the ops with the dispatcher (as in pytorch/extension-cpp).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
