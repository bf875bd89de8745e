// Registers the creator when the library is loaded (polygraphy --plugins, ctypes.CDLL after importing
// tensorrt). getPluginRegistry() is resolved from the libnvinfer already in the process. A library with
// these static registrations must not also be given to loadLibrary (it would register twice): that is
// what the other target, with getCreators, is for.
#include "causalGatedScanPlugin.h"

using rfa::trt::CausalGatedScanPluginCreator;
REGISTER_TENSORRT_PLUGIN(CausalGatedScanPluginCreator);
