/* cli.h — shared helpers of the CLI's subcommands. */
#ifndef SP_CLI_H
#define SP_CLI_H
#include "segpipe.h"
#include <stdio.h>

int cli_fail(sp_status st, const char *ctx);
int cli_usage_error(const char *cmd, const char *msg);
int cmd_bench(int argc, char **argv);
int cmd_masks(int argc, char **argv);
int cmd_classify(int argc, char **argv);
int cmd_video(int argc, char **argv);
int cmd_bench_video(int argc, char **argv);
/* mkdir -p; 0 when the folder exists afterwards */
int cli_mkdir_p(const char *path);
/* rm -rf (no error when nothing is there); 0 on success */
int cli_rm_rf(const char *path);
/* Strict option values (opts.c): 0, or -1 after printing what was wrong. */
int cli_int(const char *cmd, const char *opt, const char *text, long lo, long hi, int *out);
int cli_num(const char *cmd, const char *opt, const char *text, double lo, double hi, double *out);
int cli_size(const char *cmd, const char *opt, const char *text, size_t *out);
int cmd_serve(int argc, char **argv);
/* worker_cmd.c: CT jobs on Redis Streams */
int cmd_submit(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
/* One inference of `model` on `device` in a child process first (GPU only);
 * 0, or an exit code after printing why (opts.c). */
int cli_probe(const char *model, const char *device);
void cli_set_logging(int verbose);
/* s written to f as a JSON string (quotes, escapes) */
void cli_json_str(FILE *f, const char *s);
/* batch.c: CT inputs to output files with models loaded once (sharded runs
 * and queue workers). */
typedef struct cli_batch cli_batch;
cli_batch *cli_batch_new(int threads, const char *device);   /* NULL: sp_last_error() */
void cli_batch_free(cli_batch *b);
/* An input's name for its outputs: the file or folder name without
 * .nii.gz / .nii / .zip. */
void cli_batch_name(const char *input, char *out, size_t cap);
/* 1 when labels_path exists and is not empty (a finished result) */
int cli_batch_done(const char *labels_path);
/* read input, run the CT pipeline with the model in model_dir (NULL: the
 * bundled one), write labels_path and (if non-NULL) passport_path, each
 * under a temporary name renamed into place; *seconds: the wall time */
sp_status cli_batch_run(cli_batch *b, const char *model_dir, const char *input, const char *labels_path,
                        const char *passport_path, double *seconds,
                        void (*progress)(const char *, int, int, void *), void *user);
/* shard_cmd.c: `segpipe ct --inputs LIST --shard I/N -o OUTDIR` */
int cli_parse_shard(const char *s, int *i, int *n);
int cli_ct_shard(const char *list, int si, int sn, const char *outdir, const char *model, int threads,
                 const char *device, int quiet);
/* labels_io.c: TotalSegmentator's one-file-per-class folder read as one
 * label volume (ids from the label map in *names when given, else 1..N in
 * name order; returns an exit code, 0 on success, after printing what went
 * wrong). */
int cli_read_label_folder(const char *dir, char ***names, int *nn, uint16_t **lab, sp_volume **lg);
#endif
