/* OpenMP shim for the fastcnn Cython kernels.
 *
 * Built with OpenMP (``-fopenmp`` defines ``_OPENMP``): thin wrappers over the OpenMP runtime.
 * Built without it: serial fallbacks, so the ``prange`` loops (whose pragmas Cython guards with
 * ``#ifdef _OPENMP``) simply run on the calling thread.
 */
#ifndef FASTCNN_OMP_SHIM_H
#define FASTCNN_OMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
static inline int fastcnn_omp_enabled(void) { return 1; }
static inline int fastcnn_omp_get_max_threads(void) { return omp_get_max_threads(); }
static inline void fastcnn_omp_set_num_threads(int n) { omp_set_num_threads(n); }
#else
static inline int fastcnn_omp_enabled(void) { return 0; }
static inline int fastcnn_omp_get_max_threads(void) { return 1; }
static inline void fastcnn_omp_set_num_threads(int n) { (void)n; }
#endif

/* The next unit of a kernel's shared work counter (docs/PERFORMANCE.md, "Work taken as threads
 * free up"): each thread of a parallel region takes units until the counter passes the last. */
static inline Py_ssize_t fastcnn_next_unit(Py_ssize_t* counter)
{
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

#endif /* FASTCNN_OMP_SHIM_H */
