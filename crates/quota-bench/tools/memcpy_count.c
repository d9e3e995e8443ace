/*
 * Counts the bytes and calls of memcpy and memmove by call site, for
 * `examples/instructions.rs`: what a request's values cost to move
 * (response futures nested layer in layer, requests passed by value),
 * which neither instruction counts nor allocation counts show.
 *
 *   cc -O2 -shared -fPIC -o /tmp/memcpy_count.so crates/quota-bench/tools/memcpy_count.c -ldl
 *   for n in 10000 20000; do
 *     MEMCPY_COUNT_OUT=/tmp/copies-$n.txt LD_PRELOAD=/tmp/memcpy_count.so \
 *       target/release/examples/instructions stack $n
 *   done
 *
 * Each output line is `bytes calls size offset object` for one call site
 * and one size: `offset` is the return address within `object`, for
 * `addr2line -f -C -i -e object offset` (a build with
 * CARGO_PROFILE_RELEASE_DEBUG=line-tables-only names the source line).
 * The difference of the two runs' totals, divided by 10,000, is per
 * request, the setup taken out. Only the calls made through the dynamic
 * symbols are seen: the compiler's inline moves of small values are not.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SITES 4096

struct site {
    void *at;
    size_t size;
    unsigned long calls;
};

static struct site sites[SITES];
static int counting;
static void *(*next_memcpy)(void *, const void *, size_t);
static void *(*next_memmove)(void *, const void *, size_t);

static void count(void *at, size_t size) {
    if (!counting) {
        return;
    }
    size_t start = ((uintptr_t)at ^ (size * 2654435761u)) % SITES;
    for (size_t i = 0; i < SITES; i++) {
        struct site *site = &sites[(start + i) % SITES];
        if (site->at == at && site->size == size) {
            site->calls++;
            return;
        }
        if (site->at == NULL) {
            site->at = at;
            site->size = size;
            site->calls = 1;
            return;
        }
    }
}

void *memcpy(void *to, const void *from, size_t size) {
    if (next_memcpy == NULL) {
        next_memcpy = dlsym(RTLD_NEXT, "memcpy");
    }
    count(__builtin_return_address(0), size);
    return next_memcpy(to, from, size);
}

void *memmove(void *to, const void *from, size_t size) {
    if (next_memmove == NULL) {
        next_memmove = dlsym(RTLD_NEXT, "memmove");
    }
    count(__builtin_return_address(0), size);
    return next_memmove(to, from, size);
}

__attribute__((constructor)) static void start(void) { counting = 1; }

__attribute__((destructor)) static void finish(void) {
    counting = 0;
    const char *path = getenv("MEMCPY_COUNT_OUT");
    FILE *out = fopen(path != NULL ? path : "memcpy_count.txt", "w");
    if (out == NULL) {
        return;
    }
    for (size_t i = 0; i < SITES; i++) {
        struct site *site = &sites[i];
        Dl_info info;
        if (site->at == NULL || !dladdr(site->at, &info)) {
            continue;
        }
        fprintf(out, "%lu %lu %zu 0x%lx %s\n", site->calls * site->size, site->calls, site->size,
                (unsigned long)((uintptr_t)site->at - (uintptr_t)info.dli_fbase - 1),
                info.dli_fname);
    }
    fclose(out);
}
