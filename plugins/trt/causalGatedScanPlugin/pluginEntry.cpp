// Entry points for IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and
// trt.get_plugin_registry().load_library(): no libnvinfer needed at link time.
#include "causalGatedScanPlugin.h"

using namespace nvinfer1;

extern "C" TENSORRTAPI IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static rfa::trt::CausalGatedScanPluginCreator sCreator;
    static IPluginCreatorInterface* const kCreators[] = {&sCreator};
    nbCreators = 1;
    return kCreators;
}

extern "C" TENSORRTAPI void setLoggerFinder(ILoggerFinder* finder)
{
    rfa::trt::setLoggerFinder(finder);
}
