/*
 * dicom_codes.c — which codes a structure gets in a DICOM-SEG or RTSTRUCT
 * (docs/dicom.md, "Standard codes").
 *
 * Viewers (3D Slicer, OHIF) and PACS recognise a segment by its coded
 * type, not by its name: TotalSegmentator writes SNOMED CT codes per
 * structure, and so does segpipe. The table is TotalSegmentator's published
 * mapping (and its Slicer extension's, a superset), merged and generated
 * into dicom_codes_table.h by tools/dev/make_dicom_codes.py, so an
 * installed segpipe needs no data file. A package manifest may override or
 * add codes ("dicom_codes"); a name found nowhere gets segpipe's private
 * code, derived from the name (never from the label index, which differs
 * between models), and the caller warns.
 */
#include "dicom_out.h"
#include "../core/core.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicom_codes_table.h"

int sp_dicom_codes_count(void) { return SP_DICOM_CODES_N; }

const sp_dicom_codes_row *sp_dicom_codes_at(int i)
{
    return i >= 0 && i < SP_DICOM_CODES_N ? &sp_dicom_codes_rows[i] : NULL;
}

static const sp_dicom_codes_row *table_find(const char *name)
{
    int lo = 0, hi = SP_DICOM_CODES_N - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(name, sp_dicom_codes_rows[mid].name);
        if (!c)
            return &sp_dicom_codes_rows[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

static void set_code(sp_dicom_coded *c, const char *scheme, const char *value, const char *meaning)
{
    snprintf(c->scheme, sizeof c->scheme, "%s", scheme ? scheme : "");
    snprintf(c->value, sizeof c->value, "%s", value ? value : "");
    snprintf(c->meaning, sizeof c->meaning, "%s", meaning ? meaning : "");
}

void sp_dicom_display_name(const char *name, char *out, size_t cap)
{
    if (!cap)
        return;
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++)   /* LO: no backslash, no control characters */
        out[i] = name[i] == '_' || name[i] == '\\' || (unsigned char)name[i] < 32 ? ' ' : name[i];
    out[i] = 0;
    out[0] = (char)toupper((unsigned char)out[0]);
}

/* one [scheme, value, meaning] array of strings within DICOM's rules (core/dicom_text.c);
 * checked again here for callers of the public API that hand codes in */
static int code_ok(const cJSON *a)
{
    return cJSON_IsArray(a) && cJSON_GetArraySize(a) == 3 &&   /* GetStringValue: NULL unless a string */
           sp_dicom_code_text_ok(cJSON_GetStringValue(cJSON_GetArrayItem(a, 0)),
                                 cJSON_GetStringValue(cJSON_GetArrayItem(a, 1)),
                                 cJSON_GetStringValue(cJSON_GetArrayItem(a, 2)));
}

static const char *const kParts[] = {"category", "type", "modifier", "region", "region_modifier"};

static void from_json(const cJSON *e, sp_dicom_structure *s)
{
    sp_dicom_coded *dst[] = {&s->category, &s->type, &s->modifier, &s->region, &s->region_modifier};
    for (size_t k = 0; k < sizeof kParts / sizeof *kParts; k++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(e, kParts[k]);
        if (code_ok(a))
            set_code(dst[k], cJSON_GetArrayItem(a, 0)->valuestring, cJSON_GetArrayItem(a, 1)->valuestring,
                     cJSON_GetArrayItem(a, 2)->valuestring);
    }
}

/* the manifest's entry for name, if any (codes checked at package load) */
static int from_manifest(const char *codes_json, const char *name, sp_dicom_structure *s)
{
    if (!codes_json)
        return 0;
    cJSON *j = cJSON_Parse(codes_json);
    const cJSON *e = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, name) : NULL;
    int ok = e && code_ok(cJSON_GetObjectItemCaseSensitive(e, "category")) &&
             code_ok(cJSON_GetObjectItemCaseSensitive(e, "type"));
    if (ok)
        from_json(e, s);
    cJSON_Delete(j);
    return ok;
}

int sp_dicom_structure_codes(const char *name, int label, const char *codes_json, sp_dicom_structure *s)
{
    memset(s, 0, sizeof *s);
    s->label = label;
    snprintf(s->name, sizeof s->name, "%s", name);
    sp_dicom_display_name(name, s->display, sizeof s->display);
    sp_label_rgb(label, s->rgb);
    s->standard = 1;
    if (from_manifest(codes_json, name, s))
        return 1;
    const sp_dicom_codes_row *r = table_find(name);
    if (r) {
        set_code(&s->category, r->category.scheme, r->category.value, r->category.meaning);
        set_code(&s->type, r->type.scheme, r->type.value, r->type.meaning);
        set_code(&s->modifier, r->modifier.scheme, r->modifier.value, r->modifier.meaning);
        set_code(&s->region, r->region.scheme, r->region.value, r->region.meaning);
        set_code(&s->region_modifier, r->region_modifier.scheme, r->region_modifier.value,
                 r->region_modifier.meaning);
        return 1;
    }
    uint32_t h = 2166136261u;   /* FNV-1a: the same name gives the same code in every model */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 16777619u;
    char value[17];
    snprintf(value, sizeof value, "S%08X", (unsigned)h);
    set_code(&s->category, "SCT", "123037004", "Anatomical Structure");
    char meaning[65];
    snprintf(meaning, sizeof meaning, "%s", name);
    for (char *p = meaning; *p; p++)
        if (*p == '\\' || (unsigned char)*p < 32)
            *p = ' ';
    set_code(&s->type, SP_DICOM_PRIVATE_SCHEME, value, meaning);
    s->standard = 0;
    return 0;
}
