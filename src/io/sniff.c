/*
 * sniff.c — what a path given as a volume input holds, judged from its
 * first bytes (a folder: its listing) before anything is decoded or a model
 * loaded, so a photo, a single DICOM file, a gzip of something else or a
 * folder whose series hides in a subfolder is named and answered at once
 * instead of failing deep in a reader ("sizeof_hdr is 1196314761") or
 * silently segmenting what the reader found. Bounded: 512 bytes of a file,
 * 4096 entries of a folder, two levels below it.
 */
#include "core/core.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

enum { K_UNKNOWN, K_NIFTI, K_GZIP, K_ZIP, K_DICOM, K_PNG, K_JPEG, K_HEIC, K_WEBP, K_GIF, K_EMPTY };

/* sizeof_hdr, the first 4 bytes: 348 (NIfTI-1) or 540 (NIfTI-2), either byte order */
static int is_nifti_header(const unsigned char *b, size_t n)
{
    if (n < 4)
        return 0;
    uint32_t le = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    uint32_t be = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
    return le == 348 || be == 348 || le == 540 || be == 540;
}

/* The kind of bytes b[0..n) start with */
static int kind_of(const unsigned char *b, size_t n)
{
    if (n == 0)
        return K_EMPTY;
    if (is_nifti_header(b, n))
        return K_NIFTI;
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b)
        return K_GZIP;
    if (n >= 4 && !memcmp(b, "PK\3\4", 4))
        return K_ZIP;
    if (n >= 132 && !memcmp(b + 128, "DICM", 4))
        return K_DICOM;
    if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8))
        return K_PNG;
    if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return K_JPEG;
    if (n >= 12 && !memcmp(b + 4, "ftyp", 4) &&
        (!memcmp(b + 8, "heic", 4) || !memcmp(b + 8, "heix", 4) || !memcmp(b + 8, "mif1", 4) ||
         !memcmp(b + 8, "hevc", 4) || !memcmp(b + 8, "avif", 4)))
        return K_HEIC;
    if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4))
        return K_WEBP;
    if (n >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6)))
        return K_GIF;
    return K_UNKNOWN;
}

static const char *photo_name(int k)
{
    return k == K_PNG ? "a PNG" : k == K_JPEG ? "a JPEG" : k == K_HEIC ? "a HEIC/AVIF" : k == K_WEBP ? "a WebP"
         : k == K_GIF ? "a GIF" : NULL;
}

/* the first bytes of a file; -1 when it cannot be opened */
static long head(const char *path, unsigned char *b, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = fread(b, 1, cap, f);
    fclose(f);
    return (long)n;
}

/* A file given as a volume */
static sp_status sniff_file(const char *path)
{
    unsigned char b[512];
    long n = head(path, b, sizeof b);
    if (n < 0)
        return sp_fail(SP_ERR_IO, "%s: cannot open it", path);
    int k = kind_of(b, (size_t)n);
    if (k == K_NIFTI || k == K_ZIP)
        return SP_OK;
    if (k == K_EMPTY)
        return sp_fail(SP_ERR_INPUT, "%s is empty", path);
    if (photo_name(k))
        return sp_fail(SP_ERR_INPUT, "%s is %s photo, not a CT or MRI volume: for photos use `segpipe masks` or "
                       "`segpipe classify`", path, photo_name(k));
    if (k == K_DICOM)
        return sp_fail(SP_ERR_INPUT, "%s is a single DICOM file: give the folder that holds its series (or a zip "
                       "of it)", path);
    if (k == K_GZIP) {
        gzFile g = gzopen(path, "rb");
        int got = g ? gzread(g, b, sizeof b) : -1;
        if (g)
            gzclose(g);
        int inner = got > 0 ? kind_of(b, (size_t)got) : K_UNKNOWN;
        if (inner == K_NIFTI)
            return SP_OK;
        if (inner == K_DICOM)
            return sp_fail(SP_ERR_INPUT, "%s is a gzip-compressed single DICOM file: give the folder that holds "
                           "its series (or a zip of it)", path);
        return sp_fail(SP_ERR_INPUT, "%s is gzip-compressed but holds no NIfTI header%s: a CT or MRI input is a "
                       ".nii(.gz) file, a DICOM folder or a zip of one", path,
                       got <= 0 ? " (the stream is damaged)" : "");
    }
    return sp_fail(SP_ERR_INPUT, "%s is not a NIfTI file (no NIfTI header), a DICOM folder or a zip of one", path);
}

/* What a folder holds, counted to a bound: DICOM files (by their DICM
 * preamble) and NIfTI files at the top, DICOM files below it. */
typedef struct listing {
    int dicom_top, nifti_top, files_top, dicom_below, seen;
    char sub[256];           /* the first subfolder with DICOM files */
} listing;

static void walk(const char *dir, int depth, listing *l, const char *top_sub)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) && l->seen < 4096) {
        if (e->d_name[0] == '.')
            continue;
        l->seen++;
        char p[4096];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (stat(p, &st))
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 2)
                walk(p, depth + 1, l, depth ? top_sub : e->d_name);
            continue;
        }
        unsigned char b[132];
        long n = S_ISREG(st.st_mode) ? head(p, b, sizeof b) : -1;
        int k = n > 0 ? kind_of(b, (size_t)n) : K_UNKNOWN;
        size_t len = strlen(e->d_name);
        int nifti = (len > 4 && !strcmp(e->d_name + len - 4, ".nii")) ||
                    (len > 7 && !strcmp(e->d_name + len - 7, ".nii.gz"));
        if (depth == 0) {
            l->files_top++;
            l->dicom_top += k == K_DICOM;
            l->nifti_top += nifti;
        } else if (k == K_DICOM && !l->dicom_below++) {
            snprintf(l->sub, sizeof l->sub, "%s", top_sub);
        }
    }
    if (d)
        closedir(d);
}

/* A folder given as a volume: a DICOM series in it, not beside or below */
static sp_status sniff_folder(const char *path)
{
    listing l = {0};
    walk(path, 0, &l, "");
    if (l.dicom_top)
        return SP_OK;
    if (l.dicom_below)
        return sp_fail(SP_ERR_INPUT, "%s holds no DICOM file itself; a DICOM series is in its subfolder %s: give "
                       "that folder (segpipe does not pick a series from a subfolder on its own)", path, l.sub);
    if (l.nifti_top)
        return sp_fail(SP_ERR_INPUT, "%s is a folder of %d NIfTI file%s, not a DICOM series: give one file, or "
                       "list them with --inputs", path, l.nifti_top, l.nifti_top > 1 ? "s" : "");
    if (!l.files_top)
        return sp_fail(SP_ERR_INPUT, "%s is an empty folder: give a NIfTI file or a DICOM series folder", path);
    return SP_OK;   /* files without the DICM preamble: the DICOM reader judges them */
}

sp_status sp_volume_sniff(const char *path)
{
    struct stat st;
    if (!path || !*path)
        return sp_fail(SP_ERR_USAGE, "no input path");
    if (stat(path, &st))
        return sp_fail(SP_ERR_IO, "%s: cannot open: no such file or folder", path);
    return S_ISDIR(st.st_mode) ? sniff_folder(path) : sniff_file(path);
}
