/* runtime.h — internal view of the ONNX Runtime layer. */
#ifndef SP_RUNTIME_H
#define SP_RUNTIME_H
#include "../core/core.h"
#include <onnxruntime_c_api.h>

extern const OrtApi *sp_ort;
sp_status sp_ort_check(OrtStatus *s, sp_status code, const char *what);
#endif
