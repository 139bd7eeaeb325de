/*
 * dicom_text.c — DICOM's rules for a coded concept's three strings, in one
 * place for the two rooms that check them: runtime/package.c when a
 * manifest's "dicom_codes" is loaded, io/dicom_codes.c when a caller of the
 * public API hands codes to the DICOM writers. PS3.5 6.2: CodingSchemeDesignator
 * and CodeValue are SH (16 characters), CodeMeaning LO (64); a backslash
 * separates values and control characters end them.
 */
#include "core.h"

#include <string.h>

int sp_dicom_code_text_ok(const char *scheme, const char *value, const char *meaning)
{
    const char *s[3] = {scheme, value, meaning};
    static const size_t lim[3] = {16, 16, 64};
    for (int i = 0; i < 3; i++)
        if (!s[i] || !*s[i] || strlen(s[i]) > lim[i] || strpbrk(s[i], "\\\n\r"))
            return 0;
    return 1;
}
