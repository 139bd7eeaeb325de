/* device.h — runs whose tensors live in GPU memory (internal; used by the
 * sliding window's GPU path, pipeline/window_gpu.c). */
#ifndef SP_DEVICE_H
#define SP_DEVICE_H
#include "../core/core.h"

/* 1 when m's session runs on a GPU provider whose device memory ONNX
 * Runtime accepts for inputs and outputs. */
int sp_model_on_device(const sp_model *m);
/* sp_model_run with every tensor's data a device pointer (on the runtime's GPU, sp_runtime_device_id),
 * owned by the caller, outputs included (all must be bound). ONNX Runtime
 * has finished with them when this returns. */
sp_status sp_model_run_device(sp_model *m, const sp_tensor *inputs, int n_in, sp_tensor *outputs, int n_out);
/* The runtime's device ("cpu", "cuda", ...) and precision ("auto", "fp32",
 * "fp16"), as validated by sp_runtime_create. */
const char *sp_runtime_device_name(const sp_runtime *rt);
/* The GPU number of the runtime's device ("cuda:N"; 0 for "cuda"). */
int sp_runtime_device_id(const sp_runtime *rt);
/* The model's runtime. */
const sp_runtime *sp_model_runtime(const sp_model *m);
/* sp_model_run whose unbound outputs (data NULL) are left in ONNX Runtime's
 * own buffers, not copied: outputs[j].data points into them until
 * sp_model_outputs_release(*hold). ORT allocates them when the graph
 * reaches them, so they do not sit beside its activations at its peak. */
sp_status sp_model_run_borrow(sp_model *m, const sp_tensor *inputs, int n_in, sp_tensor *outputs, int n_out,
                              void **hold);
void sp_model_outputs_release(void *hold);
const char *sp_runtime_precision(const sp_runtime *rt);
/* The runtime's intra-op threads (its cores unless set). */
int sp_runtime_threads(const sp_runtime *rt);
/* sp_model_run (outputs bound) through the model's one-thread CPU session,
 * made on first use: for as many concurrent calls as there are threads
 * (pipeline/window_calls.c). Falls back to the model's session. */
sp_status sp_model_run_solo(sp_model *m, const sp_tensor *inputs, int n_in, sp_tensor *outputs, int n_out);
/* ONNX Runtime sessions the model holds now: 1, or 2 once its one-thread
 * session is made. */
int sp_model_sessions(sp_model *m);
/* The runtime's test-time augmentation choice: "auto", "on" or "off". */
const char *sp_runtime_tta(const sp_runtime *rt);
/* sp_runtime_params.parts_on_demand: 1 when task packages loaded through rt
 * load their part sessions per run (package.c). */
int sp_runtime_parts_on_demand(const sp_runtime *rt);
/* The GPU provider's option pairs for device ("cuda", "tensorrt"): segpipe's
 * defaults for it (with one_shot, sp_runtime_params.one_shot, those of a
 * process that runs once: cuDNN's heuristic algorithm choice), then user's
 * ("key=value,...", SEGPIPE_CUDA_OPTIONS), whose keys replace the defaults'.
 * The strings are split into buf; at most max pairs. Returns the count. */
int sp_provider_options(const char *device, int one_shot, const char *user, char *buf, size_t cap, const char **keys,
                        const char **vals, int max);
#endif
