/* cli.h — shared helpers of the CLI's subcommands. */
#ifndef SP_CLI_H
#define SP_CLI_H
#include "segpipe.h"
#include <stdint.h>
#include <stdio.h>

/* common.c: shared by every subcommand */
int cli_fail(sp_status st, const char *ctx);
/* "segpipe CMD: " + the message on stderr (CMD: the running subcommand, set by
 * main); returns what fprintf returns, so it fits `return cli_errf(...), code;` */
int cli_errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* table[i][1] for the first table[i][0] equal to key, else "" (the stage
 * tables' words for each stage) */
const char *cli_word(const char *const (*table)[2], size_t n, const char *key);
void cli_set_command(const char *name);
int cli_usage_error(const char *cmd, const char *msg);
void cli_set_quiet(int quiet);
int cli_quiet(void);
/* text written atomically; 0 or an exit code after printing */
int cli_write_text(const char *path, const char *text);
/* the folder of an output file made when missing; 0, or 6 after printing */
int cli_output_folder(const char *cmd, const char *file);

/* args.c: one table-driven option parser (every subcommand answers alike) */
typedef enum { CLI_FLAG, CLI_CLEAR, CLI_STR, CLI_INT, CLI_NUM, CLI_SIZE, CLI_FN, CLI_POS, CLI_HELP } cli_kind;
typedef struct cli_opt {
    const char *name;        /* long name without "--"; NULL ends a table */
    char letter;             /* -x, or 0 */
    cli_kind kind;           /* FLAG sets *(int *)dst = 1, CLEAR = 0; STR, INT, NUM store the value;
                                SIZE a count (cli_size: K, M, G) into a size_t or uint64_t,
                                at least lo when lo > 0;
                                FN calls fn; POS adds the value to the positionals; HELP asks for help */
    void *dst;
    double lo, hi;           /* INT, NUM: the accepted range */
    int (*fn)(const char *cmd, const char *value, void *ctx);   /* 0, or an exit code after printing */
    const char *value;       /* what the value is ("N", "DIR"), for "needs a value" */
    int multi;               /* FN spelled with '_' (TotalSegmentator's): takes the following words too;
                                2: however spelled (nnUNetv2_predict's -f 0 1 2) */
} cli_opt;
typedef struct cli_hint {
    const char *spelling, *answer;   /* an unknown option and what to tell its user */
} cli_hint;
#define CLI_MAX_POS 16
typedef struct cli_args {
    const char *pos[CLI_MAX_POS];
    int n;                   /* positionals seen (may exceed CLI_MAX_POS: the command refuses) */
    char **all;              /* set by the caller (room for argc entries): every positional, for
                                commands taking a list (PHOTO..., CASES...); argv + 1 gathers them
                                in place (argv's order is then lost for other readers) */
} cli_args;
#define CLI_HELP_ASKED (-2)
/* argv[1..argc) against table t: 0 to go on, CLI_HELP_ASKED, else an exit
 * code after printing what was wrong. */
int cli_parse(const char *cmd, const cli_opt *t, const cli_hint *hints, int argc, char **argv, void *ctx,
              cli_args *a);
/* ct_report.c: what a ct/mri run says besides its labels */
#define CLI_MAX_WARNINGS 8
typedef struct cli_warnings {
    char msg[CLI_MAX_WARNINGS][256];
    int n;
} cli_warnings;
/* printed on stderr (unless quiet) and kept for the passport's provenance */
void cli_warn(cli_warnings *w, const char *cmd, const char *input, const char *msg);
void cli_print_timings(FILE *f, const sp_timings *t, double wall);
/* overlapped: seconds of the stages that ran at the same time (their sum less the time they took) */
char *cli_run_report(const char *input, const sp_volume *v, const char *model, int threads, const sp_timings *t,
                     double wall, double overlapped);
char *cli_passport_provenance(const char *passport_json, const char *input, const char *model, const char *command,
                              int argc, char **argv, const cli_warnings *w);
/* an input path checked before any work (sp_volume_sniff); 0, or an exit
 * code after printing what it is and what to give instead */
int cli_check_input(const char *cmd, const char *path);
/* ct_cmd.c, passport_cmd.c, volume_cmd.c */
int cmd_mri(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_ct(int argc, char **argv);
int cmd_passport(int argc, char **argv);
int cmd_resample(int argc, char **argv);
int cmd_model(int argc, char **argv);
int cmd_models(int argc, char **argv);
int cmd_tasks(int argc, char **argv);
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
/* dicom_node.cc: `segpipe dicom-node` (C-STORE in, segmentation out; docs/dicom.md) */
int cmd_dicom_node(int argc, char **argv);
/* queue_submit.c, queue_worker.c, queue_jobs.c: CT jobs on Redis Streams */
int cmd_submit(int argc, char **argv);
int cmd_worker(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
/* One inference of `model` on `device` in a child process first (GPU only);
 * 0, or an exit code after printing why (opts.c). */
int cli_probe(const char *model, const char *device);
void cli_set_logging(int verbose);
/* s written to f as a JSON string (quotes, escapes) */
void cli_json_str(FILE *f, const char *s);
/* One line on stderr when pk is a demo model (unless quiet). */
void cli_demo_note(const sp_package *pk, int quiet);
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
/* A queued job's options (worker): NULL/0 fields keep the batch's own. */
typedef struct cli_batch_job {
    const sp_ct_params *cp;         /* ct parameters (threads stay the batch's) */
    const char *precision;          /* auto, fp32, fp16 */
    const char *series;             /* the series of a DICOM folder with several */
    int dicom_out;                  /* labels as DICOM-SEG (DICOM inputs only) */
    const volatile int *cancel;     /* set by another thread: the run stops */
    sp_timings *timings;            /* when non-NULL: read, the run's stages, write */
} cli_batch_job;
sp_status cli_batch_run_job(cli_batch *b, const char *model_dir, const cli_batch_job *jo, const char *input,
                            const char *labels_path, const char *passport_path, double *seconds,
                            void (*progress)(const char *, int, int, void *), void *user);
/* the device the batch's runtime was made for ("cpu", "cuda", ...) */
const char *cli_batch_device(const cli_batch *b);
/* shard_cmd.c: `segpipe ct --inputs LIST --shard I/N -o OUTDIR` */
int cli_parse_shard(const char *s, int *i, int *n);
int cli_ct_shard(const char *list, int si, int sn, const char *outdir, const char *model, int threads,
                 const char *device, int jobs, int quiet);
/* labels_io.c: TotalSegmentator's one-file-per-class folder read as one
 * label volume (ids from the label map in *names when given, else 1..N in
 * name order; returns an exit code, 0 on success, after printing what went
 * wrong). */
int cli_read_label_folder(const char *who, const char *dir, char ***names, int *nn, uint16_t **lab, sp_volume **lg);
/* segpipe ct's options (ct_cmd.c's cli_ct_parse; queued jobs carry them too) */
typedef struct ct_opts {
    const char *cmd, *series, *output, *model, *report, *mlab, *preview, *inputs, *input;
    const char *crop_from;     /* --crop-from: a prior result (file or mask folder) to crop with */
    sp_runtime_params rp;
    sp_ct_params cp;
    int mri, split, no_derived, dicom_out, shard_i, shard_n, jobs, quiet, verbose, statistics;
    int tta;                   /* --tta 1, --no-tta/--disable-tta 0, -1 the package's default */
    int parts_resident;        /* --parts resident: a task package's parts all loaded at once (one input) */
    char device[16];
    sp_dicom_params dp;        /* --output-type dicom-seg|dicom-rtstruct and the --dicom-* options */
} ct_opts;
/* -1: go on; else the exit code (help, usage errors). Also checks the
 * options a queued job carries (queue_entry.c). */
int cli_ct_parse(int argc, char **argv, ct_opts *o);
/* mri_chain.c: `--model a,b,c`: *last the folder of the last model, *pre
 * (malloc'd, or NULL) the ones before it; 0 or an exit code (printed) */
int cli_chain_resolve(const char *models, char *last, size_t cap, char **pre);
/* v masked by each extractor of pre in turn into a new *out, *mask_mm3 the
 * last mask's volume; loaded(user), when given, is called once, after the
 * first extractor's package is loaded (ct_cmd.c then makes the last model's
 * sessions beside the extractors); 0 or an exit code */
int cli_chain_strip(sp_runtime *rt, const char *pre, const sp_volume *v, const sp_ct_params *cp, sp_timings *tt,
                    sp_volume **out, double *mask_mm3, void (*loaded)(void *), void *user);
/* brain_stats.c: <stem>.aseg.stats and <stem>.stats.csv from a brain MRI
 * passport (etiv_mm3 <= 0: no eTIV line); 0 or an exit code (printed) */
int cli_brain_stats(const char *passport_json, const char *stem, const char *model, double etiv_mm3);
#endif
