/*
 * brain_stats.c — the passport of a brain MRI model (task "mri") in
 * FreeSurfer's terms, so scripts that read FreeSurfer/FastSurfer outputs can
 * read segpipe's: <stem>.aseg.stats (aseg.stats' layout: "# Measure" lines,
 * then a table Index SegId NVoxels Volume_mm3 StructName normMean normStdDev
 * normMin normMax normRange) and <stem>.stats.csv (one row per region, with
 * its hemisphere). SegId is FreeSurferColorLUT's id for FreeSurfer names
 * (Left-Hippocampus 17, ctx-lh-insula 1035, ...), else the model's label.
 * Measures: BrainSegVol (all labelled voxels), lhTotal / rhTotal (regions
 * named Left-*, ctx-lh-* / Right-*, ctx-rh-*) and, with a brain extractor
 * in the chain, its mask volume as the intracranial volume estimate (eTIV).
 * Reads the passport JSON text only (include/segpipe.h front end).
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <string.h>

static const char *const DK[] = {"bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "corpuscallosum",
    "cuneus", "entorhinal", "fusiform", "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital",
    "lateralorbitofrontal", "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral",
    "parsopercularis", "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate",
    "precentral", "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal",
    "superiorparietal", "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal",
    "insula"};

static const struct { const char *name; int id; } ASEG[] = {
    {"Left-Cerebral-White-Matter", 2}, {"Left-Lateral-Ventricle", 4}, {"Left-Inf-Lat-Vent", 5},
    {"Left-Cerebellum-White-Matter", 7}, {"Left-Cerebellum-Cortex", 8}, {"Left-Thalamus", 10},
    {"Left-Thalamus-Proper", 10}, {"Left-Caudate", 11}, {"Left-Putamen", 12}, {"Left-Pallidum", 13},
    {"3rd-Ventricle", 14}, {"4th-Ventricle", 15}, {"Brain-Stem", 16}, {"Left-Hippocampus", 17},
    {"Left-Amygdala", 18}, {"CSF", 24}, {"Left-Accumbens-area", 26}, {"Left-VentralDC", 28},
    {"Right-Cerebral-White-Matter", 41}, {"Right-Lateral-Ventricle", 43}, {"Right-Inf-Lat-Vent", 44},
    {"Right-Cerebellum-White-Matter", 46}, {"Right-Cerebellum-Cortex", 47}, {"Right-Thalamus", 49},
    {"Right-Thalamus-Proper", 49}, {"Right-Caudate", 50}, {"Right-Putamen", 51}, {"Right-Pallidum", 52},
    {"Right-Hippocampus", 53}, {"Right-Amygdala", 54}, {"Right-Accumbens-area", 58}, {"Right-VentralDC", 60},
    {"CC_Posterior", 251}, {"CC_Mid_Posterior", 252}, {"CC_Central", 253}, {"CC_Mid_Anterior", 254},
    {"CC_Anterior", 255}};

/* FreeSurferColorLUT id of a region name (a trailing '*' ignored), else -1 */
static int fs_id(const char *name)
{
    char n[96];
    snprintf(n, sizeof n, "%s", name);
    size_t l = strlen(n);
    if (l && n[l - 1] == '*')
        n[l - 1] = 0;
    for (size_t i = 0; i < sizeof ASEG / sizeof *ASEG; i++)
        if (!strcmp(n, ASEG[i].name))
            return ASEG[i].id;
    for (int h = 0; h < 2; h++) {
        const char *pre = h ? "ctx-rh-" : "ctx-lh-";
        if (!strncmp(n, pre, 7))
            for (size_t i = 0; i < sizeof DK / sizeof *DK; i++)
                if (!strcmp(n + 7, DK[i]))
                    return (h ? 2001 : 1001) + (int)i;
    }
    return -1;
}

/* 'L', 'R' or '-' */
static char hemi(const char *n)
{
    if (!strncmp(n, "Left-", 5) || !strncmp(n, "ctx-lh-", 7) || !strncmp(n, "lh-", 3))
        return 'L';
    if (!strncmp(n, "Right-", 6) || !strncmp(n, "ctx-rh-", 7) || !strncmp(n, "rh-", 3))
        return 'R';
    return '-';
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(x) ? x->valuedouble : 0;
}

static void measures(FILE *f, const cJSON *ss, double etiv_mm3)
{
    double all = 0, lh = 0, rh = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, ss) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(s, "name");
        double v = num(s, "volume_ml") * 1000.0;
        char h = cJSON_IsString(nm) ? hemi(nm->valuestring) : '-';
        all += v;
        lh += h == 'L' ? v : 0;
        rh += h == 'R' ? v : 0;
    }
    fprintf(f, "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, %.6f, mm^3\n", all);
    fprintf(f, "# Measure lhTotal, lhTotalVol, Left hemisphere total volume of the labelled regions, %.6f, mm^3\n", lh);
    fprintf(f, "# Measure rhTotal, rhTotalVol, Right hemisphere total volume of the labelled regions, %.6f, mm^3\n", rh);
    if (etiv_mm3 > 0)
        fprintf(f, "# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume "
                "(the brain extractor's mask), %.6f, mm^3\n", etiv_mm3);
}

int cli_brain_stats(const char *passport_json, const char *stem, const char *model, double etiv_mm3)
{
    cJSON *j = cJSON_Parse(passport_json);
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(j, "structures");
    char p1[4200], p2[4200];
    snprintf(p1, sizeof p1, "%s.aseg.stats", stem);
    snprintf(p2, sizeof p2, "%s.stats.csv", stem);
    FILE *a = cJSON_IsArray(ss) ? fopen(p1, "w") : NULL, *c = a ? fopen(p2, "w") : NULL;
    if (!a || !c) {
        if (a)
            fclose(a);
        cJSON_Delete(j);
        cli_errf("cannot write the brain statistics beside the labels\n");
        return sp_status_exit_code(SP_ERR_IO);
    }
    fprintf(a, "# Title Segmentation Statistics\n# generating_program segpipe mri\n# model %s\n", model);
    measures(a, ss, etiv_mm3);
    fprintf(a, "# NTableCols 10\n# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev "
            "normMin normMax normRange\n");
    fprintf(c, "Index,SegId,Label,StructName,Hemisphere,NVoxels,Volume_mm3,Mean,StdDev,Min,Max\n");
    int idx = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, ss) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(s, "name"), *hu = cJSON_GetObjectItemCaseSensitive(s, "intensity");
        if (!hu)   /* CT passports call it "hu" */
            hu = cJSON_GetObjectItemCaseSensitive(s, "hu");
        const char *name = cJSON_IsString(nm) ? nm->valuestring : "unnamed";
        int label = (int)num(s, "label"), id = fs_id(name);
        double vox = num(s, "voxels"), v = num(s, "volume_ml") * 1000.0;
        double mean = num(hu, "mean"), sd = num(hu, "std"), mn = num(hu, "min"), mx = num(hu, "max");
        idx++;
        char col[96];   /* aseg.stats columns are split on blanks: spaces become '_' */
        snprintf(col, sizeof col, "%s", name);
        for (char *q = col; *q; q++)
            *q = (*q == ' ' || *q == '\t') ? '_' : *q;
        fprintf(a, "%3d %5d %8.0f %10.1f  %-40s %9.4f %9.4f %9.4f %9.4f %9.4f\n", idx, id >= 0 ? id : label, vox, v,
                col, mean, sd, mn, mx, mx - mn);
        fprintf(c, "%d,%d,%d,\"%s\",%c,%.0f,%.3f,%.4f,%.4f,%.4f,%.4f\n", idx, id >= 0 ? id : label, label,
                strchr(name, '"') ? col : name,
                hemi(name), vox, v, mean, sd, mn, mx);
    }
    int bad = ferror(a) | ferror(c);
    bad |= fclose(a) | fclose(c);
    cJSON_Delete(j);
    if (bad) {
        cli_errf("writing the brain statistics failed\n");
        return sp_status_exit_code(SP_ERR_IO);
    }
    return 0;
}
