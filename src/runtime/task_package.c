/*
 * task_package.c — task packages: several part models under one class map
 * (TotalSegmentator's `total`, five nnU-Net models merged into 117 classes;
 * tools/import/import_totalseg.py writes them, docs/model-format.md "Task
 * packages" describes the manifest).
 *
 * The top manifest names its parts (sub-folders, each a complete model
 * package) with a map from the part's labels to the task's, and optionally a
 * low-resolution "roi_crop" model. package.c loads each part as any package
 * (and so checks it; on demand, its session only when a run needs it, then
 * checked against its manifest); this file parses the top manifest's fields and checks
 * what merging needs (and the "blobs" cleanups after it): every part a CT/MRI grid model on the
 * same spacing and axes (the input is read and resampled once for all), its
 * map as long as its class count, every mapped label inside the task's map.
 * The merge itself runs in pipeline/ct.c.
 */
#include "package.h"
#include "runtime.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* A part folder name: letters, digits, '_', '-', '.', not starting with '.'. */
static int dir_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n >= 64 || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return 0;
    return 1;
}

static sp_status parse_map(const cJSON *m, const char *file, int i, sp_manifest *mf)
{
    int n = cJSON_GetArraySize(m);
    if (!cJSON_IsArray(m) || n < 2 || n > 65536)
        return sp_fail(SP_ERR_MODEL, "%s: parts[%d].map must be an array of 2..65536 task labels", file, i);
    if (!(mf->part_map[i] = calloc((size_t)n, sizeof(uint16_t))))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    mf->part_map_n[i] = n;
    int j = 0;
    for (const cJSON *v = m->child; v; v = v->next, j++) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 65535 ||
            v->valuedouble != (double)(int)v->valuedouble)
            return sp_fail(SP_ERR_MODEL, "%s: parts[%d].map[%d] must be a label 0..65535", file, i, j);
        mf->part_map[i][j] = (uint16_t)v->valueint;
    }
    if (mf->part_map[i][0] != 0)
        return sp_fail(SP_ERR_MODEL, "%s: parts[%d].map[0] must be 0 (background stays background)", file, i);
    return SP_OK;
}

/* crop.<key>: an array of 1..1024 names of the crop model's labels into
 * (*names)[0..*n) */
static sp_status parse_names(const cJSON *cr, const char *key, const char *file, char ***names, int *n)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(cr, key);
    int k = cJSON_GetArraySize(a);
    if (!cJSON_IsArray(a) || k < 1 || k > 1024)
        return sp_fail(SP_ERR_MODEL, "%s: crop.%s must be an array of 1..1024 structure names", file, key);
    if (!(*names = calloc((size_t)k, sizeof **names)))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (const cJSON *v = a->child; v; v = v->next) {
        if (!cJSON_IsString(v))
            return sp_fail(SP_ERR_MODEL, "%s: crop.%s[%d] must be a name", file, key, *n);
        if (!((*names)[(*n)++] = strdup(v->valuestring)))
            return sp_fail(SP_ERR_NOMEM, "out of memory");
    }
    return SP_OK;
}

/* "crop": {"structures": [...], optionally "remove_outside": [...] with
 * "remove_outside_mm": mm} */
static sp_status parse_crop_names(const cJSON *cr, const char *file, sp_manifest *mf)
{
    sp_status st = parse_names(cr, "structures", file, &mf->crop_names, &mf->n_crop_names);
    const cJSON *ro = cJSON_GetObjectItemCaseSensitive(cr, "remove_outside");
    const cJSON *mm = cJSON_GetObjectItemCaseSensitive(cr, "remove_outside_mm");
    if (st || (!ro && !mm))
        return st;
    if (!ro || !cJSON_IsNumber(mm) || !(mm->valuedouble >= 0 && mm->valuedouble <= 1000))
        return sp_fail(SP_ERR_MODEL, "%s: crop.remove_outside (names) and crop.remove_outside_mm (0..1000) go "
                       "together", file);
    mf->outside_mm = mm->valuedouble;
    return parse_names(cr, "remove_outside", file, &mf->outside_names, &mf->n_outside);
}

/* "blobs": [{"label": 1, "keep": "largest"}, {"label": 2, "remove_mm3": 50000}] */
static sp_status parse_blobs(const cJSON *b, const char *file, sp_manifest *mf)
{
    int n = cJSON_GetArraySize(b);
    if (!cJSON_IsArray(b) || n > 16)
        return sp_fail(SP_ERR_MODEL, "%s: \"blobs\" must be an array of at most 16 cleanups", file);
    for (const cJSON *e = b->child; e; e = e->next) {
        int i = mf->n_blobs;
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(e, "label");
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(e, "keep");
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(e, "remove_mm3");
        if (!cJSON_IsNumber(l) || l->valuedouble < 1 || l->valuedouble > 65535 ||
            l->valuedouble != (double)(int)l->valuedouble || !k == !r ||
            (k && (!cJSON_IsString(k) || strcmp(k->valuestring, "largest"))) ||
            (r && (!cJSON_IsNumber(r) || !(r->valuedouble >= 0 && r->valuedouble <= 1e12))))
            return sp_fail(SP_ERR_MODEL, "%s: blobs[%d] must be {\"label\": L, \"keep\": \"largest\"} or "
                           "{\"label\": L, \"remove_mm3\": V}", file, i);
        mf->blob_label[i] = (uint16_t)l->valueint;
        mf->blob_largest[i] = k != NULL;
        mf->blob_max_mm3[i] = r ? r->valuedouble : 0;
        mf->n_blobs = i + 1;
    }
    return SP_OK;
}

/* "vertebrae_pp": {"c1": 1, "l5": 24, "min_mm3": 100, "dilation_mm": 3} */
static sp_status parse_vpp(const cJSON *v, const char *file, sp_manifest *mf)
{
    const char *key[4] = {"c1", "l5", "min_mm3", "dilation_mm"};
    const double hi[4] = {65535, 65535, 1e12, 20};
    double x[4];
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, key[i]) : NULL;
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= (i < 2) && e->valuedouble <= hi[i]) ||
            (i < 2 && e->valuedouble != (double)(int)e->valuedouble))
            return sp_fail(SP_ERR_MODEL, "%s: \"vertebrae_pp\" must be {\"c1\": L, \"l5\": L, \"min_mm3\": V, "
                           "\"dilation_mm\": 0..20}", file);
        x[i] = e->valuedouble;
    }
    mf->vpp = 1;
    mf->vpp_c1 = (uint16_t)x[0], mf->vpp_l5 = (uint16_t)x[1], mf->vpp_min_mm3 = x[2], mf->vpp_mm = x[3];
    return SP_OK;
}

sp_status sp_manifest_parse_parts(const struct cJSON *j, const char *file, sp_manifest *mf)
{
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(j, "parts");
    int n = cJSON_GetArraySize(parts);
    if (!cJSON_IsArray(parts) || n < 1 || n > SP_MAX_PARTS)
        return sp_fail(SP_ERR_MODEL, "%s: \"parts\" must be an array of 1..%d parts", file, SP_MAX_PARTS);
    const cJSON *merge = cJSON_GetObjectItemCaseSensitive(j, "merge");
    if (merge && (!cJSON_IsString(merge) || strcmp(merge->valuestring, "overwrite_nonzero")))
        return sp_fail(SP_ERR_MODEL, "%s: \"merge\" must be \"overwrite_nonzero\" (the only rule)", file);
    int i = 0;
    for (const cJSON *p = parts->child; p; p = p->next, i++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(p, "dir");
        if (!cJSON_IsString(d) || !dir_name_ok(d->valuestring))
            return sp_fail(SP_ERR_MODEL, "%s: parts[%d].dir must be a folder name inside the package", file, i);
        snprintf(mf->part_dir[i], sizeof mf->part_dir[i], "%s", d->valuestring);
        mf->n_parts = i + 1;   /* so that a failure below frees this part's map */
        sp_status st = parse_map(cJSON_GetObjectItemCaseSensitive(p, "map"), file, i, mf);
        if (st)
            return st;
    }
    const cJSON *bl = cJSON_GetObjectItemCaseSensitive(j, "blobs");
    sp_status bst = bl ? parse_blobs(bl, file, mf) : SP_OK;
    const cJSON *dm = cJSON_GetObjectItemCaseSensitive(j, "derived_masks");
    if (dm && !(cJSON_IsString(dm) && !strcmp(dm->valuestring, "body")))
        return sp_fail(SP_ERR_MODEL, "%s: \"derived_masks\" must be \"body\" (TotalSegmentator's body and skin)", file);
    mf->derived_body = dm != NULL;
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(j, "refine");
    if (rf) {   /* {"dir": "mask305", "keep_label": 1, "dilation_mm": 2} */
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(rf, "dir"), *k = cJSON_GetObjectItemCaseSensitive(rf,
                     "keep_label"), *m = cJSON_GetObjectItemCaseSensitive(rf, "dilation_mm");
        if (!cJSON_IsString(d) || !dir_name_ok(d->valuestring) || !cJSON_IsNumber(k) || !(k->valuedouble >= 1 &&
            k->valuedouble <= 65535) || k->valuedouble != (double)(int)k->valuedouble || !cJSON_IsNumber(m) ||
            !(m->valuedouble >= 0 && m->valuedouble <= 20))
            return sp_fail(SP_ERR_MODEL, "%s: \"refine\" must be {\"dir\": a folder in the package, "
                           "\"keep_label\": L, \"dilation_mm\": 0..20}", file);
        snprintf(mf->refine_dir, sizeof mf->refine_dir, "%s", d->valuestring);
        mf->refine_keep = (uint16_t)k->valueint;
        mf->refine_mm = m->valuedouble;
    }
    const cJSON *vp = cJSON_GetObjectItemCaseSensitive(j, "vertebrae_pp");
    if (!bst && vp)
        bst = parse_vpp(vp, file, mf);
    if (bst)
        return bst;
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(j, "roi_crop"), *cr = cJSON_GetObjectItemCaseSensitive(j, "crop");
    if (rc && cr)
        return sp_fail(SP_ERR_MODEL, "%s: \"roi_crop\" and \"crop\" exclude each other", file);
    if (cr) {
        sp_status st = parse_crop_names(cr, file, mf);
        if (st)
            return st;
        rc = cr;
    }
    if (rc) {
        const char *what = cr ? "crop" : "roi_crop";
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(rc, "dir");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(rc, "addon_mm");
        if (!cJSON_IsString(d) || !dir_name_ok(d->valuestring) || !cJSON_IsArray(a) || cJSON_GetArraySize(a) != 3)
            return sp_fail(SP_ERR_MODEL, "%s: %s needs \"dir\" (a folder in the package) and \"addon_mm\" "
                           "(3 numbers)", file, what);
        snprintf(mf->crop_dir, sizeof mf->crop_dir, "%s", d->valuestring);
        for (int k = 0; k < 3; k++) {
            const cJSON *v = cJSON_GetArrayItem(a, k);
            if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 1000))
                return sp_fail(SP_ERR_MODEL, "%s: %s.addon_mm[%d] must be 0..1000 mm", file, what, k);
            mf->crop_addon[k] = v->valuedouble;
        }
    }
    return SP_OK;
}

/* A part (or the crop model) as merging needs it. */
static sp_status check_part(const sp_package *pk, const sp_package *part, const char *sub)
{
    const sp_manifest *p = &part->mf, *p0 = pk->part[0] ? &pk->part[0]->mf : p;
    if (p->n_parts)
        return sp_fail(SP_ERR_MODEL, "%s/%s: a part cannot itself be a task package", pk->dir, sub);
    if ((strcmp(p->task, "ct") && strcmp(p->task, "mri")) || p->conform_n)
        return sp_fail(SP_ERR_MODEL, "%s/%s: parts must be CT/MRI grid models (not '%s'%s)", pk->dir, sub, p->task,
                       p->conform_n ? ", conformed" : "");
    for (int a = 0; a < 3; a++)
        if (p->spacing[a] != p0->spacing[a] || p->axes[a] != p0->axes[a])
            return sp_fail(SP_ERR_MODEL, "%s/%s: spacing %g/%g/%g mm, axes %d%d%d differ from the first part's "
                           "(%g/%g/%g mm, %d%d%d): parts share one resampled input", pk->dir, sub, p->spacing[0],
                           p->spacing[1], p->spacing[2], p->axes[0], p->axes[1], p->axes[2], p0->spacing[0],
                           p0->spacing[1], p0->spacing[2], p0->axes[0], p0->axes[1], p0->axes[2]);
    return SP_OK;
}

/* crop_want[l] for the crop model's labels named in "crop.structures"; a
 * name the crop model does not have is refused. */
static sp_status crop_want(sp_package *pk)
{
    sp_manifest *mf = &pk->mf;
    const sp_manifest *c = &pk->crop->mf;
    if (!(mf->crop_want = calloc((size_t)c->num_classes, 1)))
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < mf->n_crop_names; i++) {
        int found = 0;
        for (int l = 1; l < c->num_classes; l++)
            if (!strcmp(c->labels[l], mf->crop_names[i]))
                mf->crop_want[l] = 1, found = 1;
        if (!found)
            return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: crop.structures names \"%.64s\", which the crop model "
                           "'%s' does not segment", pk->dir, mf->crop_names[i], c->name);
    }
    for (int i = 0; i < mf->n_outside; i++) {
        int found = 0;
        for (int l = 1; l < c->num_classes && !found; l++)
            found = !strcmp(c->labels[l], mf->outside_names[i]);
        if (!found)
            return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: crop.remove_outside names \"%.64s\", which the crop "
                           "model '%s' does not segment", pk->dir, mf->outside_names[i], c->name);
    }
    return SP_OK;
}

sp_status sp_task_check_parts(sp_package *pk)
{
    sp_manifest *mf = &pk->mf;
    sp_status st;
    for (int i = 0; i < mf->n_parts; i++) {
        if ((st = check_part(pk, pk->part[i], mf->part_dir[i])))
            return st;
        const sp_manifest *p = &pk->part[i]->mf;
        if (mf->part_map_n[i] != p->num_classes)
            return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: parts[%d].map has %d entries but part '%s' has %d classes",
                           pk->dir, i, mf->part_map_n[i], mf->part_dir[i], p->num_classes);
        for (int j = 0; j < mf->part_map_n[i]; j++)
            if (mf->part_map[i][j] >= mf->num_classes)
                return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: parts[%d].map[%d] = %d, beyond the task's %d classes",
                               pk->dir, i, j, mf->part_map[i][j], mf->num_classes);
    }
    for (int b = 0; b < mf->n_blobs; b++)
        if (mf->blob_label[b] >= mf->num_classes)
            return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: blobs[%d].label = %d, beyond the task's %d classes", pk->dir,
                           b, mf->blob_label[b], mf->num_classes);
    for (int i = 0; mf->derived_body && i < 2; i++)
        if (sp_package_label_of(pk, i ? "body_extremities" : "body_trunc") < 0)
            return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: derived_masks \"body\" needs a label named %s", pk->dir,
                           i ? "body_extremities" : "body_trunc");
    if (mf->vpp && (mf->vpp_c1 >= mf->num_classes || mf->vpp_l5 >= mf->num_classes))
        return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: vertebrae_pp labels c1 = %d, l5 = %d: beyond the task's %d "
                       "classes", pk->dir, mf->vpp_c1, mf->vpp_l5, mf->num_classes);
    if (pk->refine) {
        const sp_manifest *f = &pk->refine->mf;
        if (f->n_parts || (strcmp(f->task, "ct") && strcmp(f->task, "mri")) || f->conform_n)
            return sp_fail(SP_ERR_MODEL, "%s/%s: the refine model must be a CT/MRI grid model", pk->dir,
                           mf->refine_dir);
        if (mf->refine_keep >= f->num_classes)
            return sp_fail(SP_ERR_MODEL, "%s/segpipe.json: refine.keep_label = %d, beyond the refine model's %d "
                           "classes", pk->dir, mf->refine_keep, f->num_classes);
    }
    if (pk->crop) {
        const sp_manifest *c = &pk->crop->mf;
        /* a subtask's crop may come from another whole task (TotalSegmentator's crop_model, teeth's
         * craniofacial_structures): a task package whose own crop model is a single model */
        int task_crop = c->n_parts && mf->n_crop_names && !(pk->crop->crop && pk->crop->crop->mf.n_parts);
        if ((c->n_parts && !task_crop) || (strcmp(c->task, "ct") && strcmp(c->task, "mri")) || c->conform_n)
            return sp_fail(SP_ERR_MODEL, "%s/%s: the crop model must be a CT/MRI grid model (or, for a \"crop\" "
                           "rule, a task package whose own crop model is one)", pk->dir, mf->crop_dir);
        if (mf->n_crop_names && (st = crop_want(pk)))
            return st;
    }
    /* the top manifest takes the first part's grid: the shared resampling */
    const sp_manifest *p0 = &pk->part[0]->mf;
    memcpy(mf->spacing, p0->spacing, sizeof mf->spacing);
    memcpy(mf->patch, p0->patch, sizeof mf->patch);
    memcpy(mf->axes, p0->axes, sizeof mf->axes);
    mf->norm = p0->norm;
    mf->step = p0->step;
    mf->sigma_scale = p0->sigma_scale;
    mf->channels = 1;
    pk->model = pk->part[0]->model;
    return SP_OK;
}

int sp_package_num_parts(const sp_package *pk) { return pk->mf.n_parts; }
const sp_package *sp_package_part(const sp_package *pk, int i)
{
    return i >= 0 && i < pk->mf.n_parts ? pk->part[i] : NULL;
}
const sp_package *sp_package_roi_crop(const sp_package *pk) { return pk->crop; }
int sp_package_has_derived_masks(const sp_package *pk) { return pk->mf.derived_body; }

int sp_package_label_of(const sp_package *pk, const char *name)
{
    for (int l = 1; l < pk->mf.num_classes; l++)
        if (!strcmp(pk->mf.labels[l], name))
            return l;
    return -1;
}

/* Which parts a run needs: all, or (--roi-subset, keep[] over the task's
 * labels) those whose map holds a kept structure, as TotalSegmentator picks
 * the part models for roi_subset. */
int sp_task_part_needed(const sp_manifest *mf, int i, const uint8_t *keep)
{
    if (!keep)
        return 1;
    for (int j = 1; j < mf->part_map_n[i]; j++)
        if (mf->part_map[i][j] && keep[mf->part_map[i][j]])
            return 1;
    return 0;
}
