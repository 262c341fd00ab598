/* NumPy's data-memory handler that keeps large freed blocks for reuse (fastcnn._heapcache;
 * docs/PERFORMANCE.md, section 11).  Included by _heapcache.pyx after NumPy's headers.
 *
 * It wraps NumPy's default handler (plain malloc blocks; its cache of small blocks and its
 * huge-page advice kept): blocks of at least min_bytes are kept when freed (oldest dropped
 * first beyond max_bytes) and handed back for a request they fit with at most slack_pct % to
 * spare; everything else goes to the default handler. */
#ifndef FASTCNN_HEAPCACHE_H
#define FASTCNN_HEAPCACHE_H

#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FCH_SLOTS 32

typedef struct { void *ptr; size_t cap; } fch_block;

static struct {
    pthread_mutex_t lock;
    size_t min_bytes, max_bytes, slack_pct;
    PyDataMemAllocator base;      /* NumPy's default handler */
    size_t bytes;                 /* held in the slots */
    int n;                        /* slots used, oldest first */
    fch_block slot[FCH_SLOTS];
    unsigned long long hits, misses;
} fch = {PTHREAD_MUTEX_INITIALIZER, (size_t)-1, 0, 0, {NULL, NULL, NULL, NULL, NULL}, 0, 0, {{NULL, 0}}, 0, 0};

static void fch_drop(int i) {     /* lock held */
    fch.bytes -= fch.slot[i].cap;
    memmove(&fch.slot[i], &fch.slot[i + 1], (size_t)(fch.n - i - 1) * sizeof(fch_block));
    fch.n--;
}

/* The smallest kept block of size to size + slack_pct % bytes, or NULL. */
static void *fch_take(size_t size) {
    void *p = NULL;
    size_t limit = size + size / 100 * fch.slack_pct;
    int best = -1;
    pthread_mutex_lock(&fch.lock);
    for (int i = 0; i < fch.n; i++)
        if (fch.slot[i].cap >= size && fch.slot[i].cap <= limit
                && (best < 0 || fch.slot[i].cap < fch.slot[best].cap))
            best = i;
    if (best >= 0) {
        p = fch.slot[best].ptr;
        fch_drop(best);
        fch.hits++;
    } else {
        fch.misses++;
    }
    pthread_mutex_unlock(&fch.lock);
    return p;
}

static void *fch_malloc(void *ctx, size_t size) {
    (void)ctx;
    void *p = size >= fch.min_bytes ? fch_take(size) : NULL;
    return p != NULL ? p : fch.base.malloc(fch.base.ctx, size);
}

static void *fch_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    size_t size;
    void *p = NULL;
    if (!__builtin_mul_overflow(nelem, elsize, &size) && size >= fch.min_bytes)
        p = fch_take(size);
    return p != NULL ? memset(p, 0, size) : fch.base.calloc(fch.base.ctx, nelem, elsize);
}

static void *fch_realloc(void *ctx, void *ptr, size_t new_size) {
    (void)ctx;
    return fch.base.realloc(fch.base.ctx, ptr, new_size);
}

static void fch_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    if (ptr == NULL)
        return;
    size_t cap = malloc_usable_size(ptr);  /* (the block's real size, not the array's) */
    if (cap < fch.min_bytes || cap > fch.max_bytes) {
        fch.base.free(fch.base.ctx, ptr, size);
        return;
    }
    fch_block old[FCH_SLOTS];
    int n_old = 0;
    pthread_mutex_lock(&fch.lock);
    while (fch.n > 0 && (fch.n == FCH_SLOTS || fch.bytes + cap > fch.max_bytes)) {
        old[n_old++] = fch.slot[0];
        fch_drop(0);
    }
    fch.slot[fch.n].ptr = ptr;
    fch.slot[fch.n].cap = cap;
    fch.n++;
    fch.bytes += cap;
    pthread_mutex_unlock(&fch.lock);
    for (int i = 0; i < n_old; i++)
        fch.base.free(fch.base.ctx, old[i].ptr, old[i].cap);
}

/* Free every kept block; returns their bytes. */
static size_t fch_release(void) {
    fch_block old[FCH_SLOTS];
    int n_old = 0;
    size_t bytes = 0;
    pthread_mutex_lock(&fch.lock);
    while (fch.n > 0) {
        old[n_old++] = fch.slot[0];
        fch_drop(0);
    }
    pthread_mutex_unlock(&fch.lock);
    for (int i = 0; i < n_old; i++) {
        bytes += old[i].cap;
        fch.base.free(fch.base.ctx, old[i].ptr, old[i].cap);
    }
    return bytes;
}

static void fch_lock(void) { pthread_mutex_lock(&fch.lock); }
static void fch_unlock(void) { pthread_mutex_unlock(&fch.lock); }

/* Wrap base (a capsule of NumPy's default handler, kept alive by the caller); -1 with an
 * exception set if it is not that. */
static int fch_configure(PyObject *base, size_t min_bytes, size_t max_bytes, size_t slack_pct) {
    PyDataMem_Handler *h = (PyDataMem_Handler *)PyCapsule_GetPointer(base, "mem_handler");
    if (h == NULL)
        return -1;
    if (strcmp(h->name, "default_allocator") != 0) {
        PyErr_Format(PyExc_ValueError, "the array cache wraps NumPy's default_allocator, not %s", h->name);
        return -1;
    }
    static int forks_handled = 0;  /* (a fork waits for the lock: the child's is free) */
    if (!forks_handled && pthread_atfork(fch_lock, fch_unlock, fch_unlock) == 0)
        forks_handled = 1;
    fch_release();
    pthread_mutex_lock(&fch.lock);
    fch.base = h->allocator;
    fch.min_bytes = min_bytes;
    fch.max_bytes = max_bytes;
    fch.slack_pct = slack_pct;
    pthread_mutex_unlock(&fch.lock);
    return 0;
}

static void fch_stats(size_t *blocks, size_t *bytes, unsigned long long *hits, unsigned long long *misses,
                      size_t *min_bytes, size_t *max_bytes) {
    pthread_mutex_lock(&fch.lock);
    *min_bytes = fch.min_bytes;
    *max_bytes = fch.max_bytes;
    *blocks = (size_t)fch.n;
    *bytes = fch.bytes;
    *hits = fch.hits;
    *misses = fch.misses;
    pthread_mutex_unlock(&fch.lock);
}

static PyDataMem_Handler fch_handler = {
    "fastcnn_heap_cache", 1, {NULL, fch_malloc, fch_calloc, fch_realloc, fch_free}};

static PyObject *fch_capsule(void) {
    return PyCapsule_New(&fch_handler, "mem_handler", NULL);
}

#endif
