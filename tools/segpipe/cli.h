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
/* One inference of `model` on `device` in a child process first (GPU only);
 * 0, or an exit code after printing why (opts.c). */
int cli_probe(const char *model, const char *device);
void cli_set_logging(int verbose);
/* labels_io.c: TotalSegmentator's one-file-per-class folder read as one
 * label volume (ids from the label map in *names when given, else 1..N in
 * name order; returns an exit code, 0 on success, after printing what went
 * wrong). */
int cli_read_label_folder(const char *dir, char ***names, int *nn, uint16_t **lab, sp_volume **lg);
#endif
