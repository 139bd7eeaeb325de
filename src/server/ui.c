/*
 * ui.c — the web page (docs/ui.md): GET / and /ui/<file> from the files
 * embedded by ui_assets.S, with ETags (304 on If-None-Match) and cache
 * headers, and GET /v1/models, the models the page offers (task, classes,
 * label colours, masks). The page and its scripts hold no patient data and
 * are served without the API key; everything they fetch needs it.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define DECL(sym) extern const char sym[], sym##_end[]
DECL(sp_ui_index_html);
DECL(sp_ui_app_js);
DECL(sp_ui_app_css);
DECL(sp_ui_licenses_txt);
DECL(sp_ui_niivue_js);

typedef struct asset {
    const char *path, *ctype, *start, *end, *cache;
    char etag[24];
} asset;

static asset assets[] = {
    {"/", "text/html; charset=utf-8", sp_ui_index_html, sp_ui_index_html_end, "no-cache", ""},
    {"/ui/app.js", "text/javascript; charset=utf-8", sp_ui_app_js, sp_ui_app_js_end, "no-cache", ""},
    {"/ui/app.css", "text/css; charset=utf-8", sp_ui_app_css, sp_ui_app_css_end, "no-cache", ""},
    {"/ui/licenses.txt", "text/plain; charset=utf-8", sp_ui_licenses_txt, sp_ui_licenses_txt_end, "no-cache", ""},
    /* the viewer changes only with the pinned version: a day in caches */
    {"/ui/niivue.umd.js", "text/javascript; charset=utf-8", sp_ui_niivue_js, sp_ui_niivue_js_end,
     "public, max-age=86400", ""},
};

static const char *page_csp =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' blob: data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'";

/* ETag: FNV-1a 64 of the content, computed once */
static void etag_of(asset *a)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = a->start; p < a->end; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    snprintf(a->etag, sizeof a->etag, "\"%016llx\"", (unsigned long long)h);
}

static pthread_once_t etags_once = PTHREAD_ONCE_INIT;
static void etags_init(void)
{
    for (size_t i = 0; i < sizeof assets / sizeof *assets; i++)
        etag_of(&assets[i]);
}

int sp_ui_path(const char *url)
{
    return !strcmp(url, "/") || !strcmp(url, "/index.html") || !strncmp(url, "/ui/", 4);
}

enum MHD_Result sp_ui_serve(server *s, struct MHD_Connection *c, const char *url, const char *method, int *ok)
{
    if (s->p.no_ui)
        return sp_http_error(c, 404, "the web page is off (--no-ui)", 0);
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return sp_http_error(c, 405, "method not allowed here (allowed: GET)", 0);
    pthread_once(&etags_once, etags_init);
    if (!strcmp(url, "/index.html"))
        url = "/";
    asset *a = NULL;
    for (size_t i = 0; i < sizeof assets / sizeof *assets; i++)
        if (!strcmp(assets[i].path, url))
            a = &assets[i];
    if (!a)
        return sp_http_error(c, 404, "no such file in the web page", 0);
    const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-None-Match");
    int fresh = inm && strstr(inm, a->etag) != NULL;
    struct MHD_Response *r = fresh ? MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT)
                                   : MHD_create_response_from_buffer((size_t)(a->end - a->start), (void *)a->start,
                                                                     MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Cache-Control", a->cache);
    MHD_add_response_header(r, "ETag", a->etag);
    if (a == &assets[0]) {
        MHD_add_response_header(r, "Content-Security-Policy", page_csp);
        MHD_add_response_header(r, "X-Frame-Options", "DENY");
        MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    }
    *ok = 1;
    return sp_http_send(c, fresh ? 304 : 200, r, a->ctype, 0);
}

/* GET /v1/models: [{"name", "task", "ready", "labels": {"1": {"name", "rgb"}}, "masks": [...]}] */
char *sp_models_json(server *s)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"models\": [");
    for (int i = 0; i < s->n_models; i++) {
        model_entry *me = &s->models[i];
        sp_buf_puts(&b, i ? ",\n {\"name\": " : "\n {\"name\": ");
        sp_buf_json_str(&b, me->name);
        int ready = atomic_load(&me->ready) && me->pk;
        pthread_mutex_lock(&s->mu);   /* the warm-up thread writes error */
        const char *state = ready ? "ready" : me->error[0] ? "failed" : !atomic_load(&me->settled) ? "warming up"
                                                                    : "unloaded";
        sp_buf_printf(&b, ", \"ready\": %s, \"state\": \"%s\"", ready ? "true" : "false", state);
        if (me->error[0]) {
            sp_buf_puts(&b, ", \"error\": ");
            sp_buf_json_str(&b, me->error);
        }
        pthread_mutex_unlock(&s->mu);
        if (!me->pk) {
            sp_buf_puts(&b, "}");
            continue;
        }
        sp_buf_puts(&b, ", \"task\": ");
        sp_buf_json_str(&b, sp_package_task(me->pk));
        sp_buf_printf(&b, ", \"volume\": %s, \"demo\": %s", sp_package_is_volume(me->pk) ? "true" : "false",
                      sp_package_demo(me->pk) ? "true" : "false");
        int n = sp_package_num_classes(me->pk);
        sp_buf_printf(&b, ", \"classes\": %d, \"labels\": {", n);
        for (int l = 1; l < n; l++) {
            uint8_t rgb[3];
            sp_label_rgb(l, rgb);
            sp_buf_printf(&b, "%s\"%d\": {\"name\": ", l > 1 ? ", " : "", l);
            sp_buf_json_str(&b, sp_package_label(me->pk, l));
            sp_buf_printf(&b, ", \"rgb\": [%d, %d, %d]}", rgb[0], rgb[1], rgb[2]);
        }
        sp_buf_puts(&b, "}, \"masks\": [");
        for (int m = 0; m < sp_package_num_masks(me->pk); m++) {
            if (m)
                sp_buf_puts(&b, ", ");
            sp_buf_json_str(&b, sp_package_mask_name(me->pk, m));
        }
        sp_buf_puts(&b, "]}");
    }
    sp_buf_puts(&b, "\n]}\n");
    return sp_buf_take(&b);
}
