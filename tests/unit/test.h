/* test.h — a minimal unit-test harness: CHECK records a failure and goes
 * on; main() runs every registered test and prints "N passed, N failed". */
#ifndef SP_TEST_H
#define SP_TEST_H
#include <stdio.h>
#include <string.h>

extern int t_failed;
#define CHECK(c)                                                                  \
    do {                                                                          \
        if (!(c)) {                                                               \
            fprintf(stderr, "    %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
            t_failed = 1;                                                         \
        }                                                                         \
    } while (0)
#define CHECK_MSG(c, msg)                                                         \
    do {                                                                          \
        if (!(c)) {                                                               \
            fprintf(stderr, "    %s:%d: CHECK failed: %s (%s)\n", __FILE__, __LINE__, #c, msg); \
            t_failed = 1;                                                         \
        }                                                                         \
    } while (0)
#define CHECK_CONTAINS(s, sub) CHECK_MSG(strstr((s), (sub)) != NULL, s)

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

/* Path of a test data file (tests/data/...), from SEGPIPE_TEST_DATA or cwd. */
const char *test_data(const char *name);
#endif
