/* cli.h — shared helpers of the CLI's subcommands. */
#ifndef SP_CLI_H
#define SP_CLI_H
#include "segpipe.h"
#include <stdio.h>

int cli_fail(sp_status st, const char *ctx);
int cli_usage_error(const char *cmd, const char *msg);
int cmd_bench(int argc, char **argv);
int cmd_masks(int argc, char **argv);
int cmd_video(int argc, char **argv);
int cmd_bench_video(int argc, char **argv);
/* mkdir -p; 0 when the folder exists afterwards */
int cli_mkdir_p(const char *path);
/* rm -rf (no error when nothing is there); 0 on success */
int cli_rm_rf(const char *path);
#endif
