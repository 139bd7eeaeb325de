/* runtime.h — internal view of the ONNX Runtime layer. */
#ifndef SP_RUNTIME_H
#define SP_RUNTIME_H
#include "../core/core.h"
#include <onnxruntime_c_api.h>

extern const OrtApi *sp_ort;
sp_status sp_ort_check(OrtStatus *s, sp_status code, const char *what);
/* sp_model_load with the model's arena default (1: ONNX Runtime's arena and
 * memory pattern, 0: plain allocations); the runtime's "on"/"off" wins. */
sp_status sp_model_load_arena(sp_runtime *rt, const char *path, int arena, sp_model **out);
int sp_model_arena(const sp_model *m);
#endif
