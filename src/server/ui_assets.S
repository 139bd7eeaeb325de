/*
 * ui_assets.S — the web page's files, embedded in libsegpipe at build time
 * (no share folder to find, no CDN): ui/ (index.html, app.js, app.css,
 * licenses.txt) and niivue's browser bundle, fetched by
 * scripts/install-deps.sh from npm with its checksum pinned. Paths are
 * relative to the repository root, where make runs.
 */
#define ASSET(sym, path)                  \
    .section .rodata.sp_ui, "a";          \
    .balign 16;                           \
    .global sym;                          \
    .hidden sym;                          \
sym:                                      \
    .incbin path;                         \
    .global sym##_end;                    \
    .hidden sym##_end;                    \
sym##_end:                                \
    .byte 0

ASSET(sp_ui_index_html, "ui/index.html")
ASSET(sp_ui_app_js, "ui/app.js")
ASSET(sp_ui_app_css, "ui/app.css")
ASSET(sp_ui_licenses_txt, "ui/licenses.txt")
ASSET(sp_ui_niivue_js, "third_party/niivue/niivue.umd.js")

    .section .note.GNU-stack, "", @progbits
