/* main.c — runs every unit test; prints one line per test and a summary. */
#include "test.h"
#include <stdlib.h>

int t_failed;

#define X(name) void name(void);
#include "tests.def"
#undef X

static const test_case tests[] = {
#define X(name) {#name, name},
#include "tests.def"
#undef X
};

const char *test_data(const char *name)
{
    static char buf[4096];
    const char *root = getenv("SEGPIPE_TEST_DATA");
    snprintf(buf, sizeof buf, "%s/%s", root ? root : "tests/data", name);
    return buf;
}

int main(int argc, char **argv)
{
    int pass = 0, fail = 0;
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1]))
            continue;
        t_failed = 0;
        tests[i].fn();
        printf("%s %s\n", t_failed ? "FAIL" : "ok  ", tests[i].name);
        fflush(stdout);
        if (t_failed)
            fail++;
        else
            pass++;
    }
    printf("unit: %d passed, %d failed\n", pass, fail);
    return fail ? 1 : 0;
}
