// The one thread helper of both kernels (pure C++17): run work on std::threads, the caller's included.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fewshot_da {

// Runs `fn` on `n` threads (the caller's included) and rethrows the first exception.
template <typename Fn>
void run_threads(int n, Fn&& fn) {
    std::exception_ptr error;
    std::mutex error_lock;
    auto guarded = [&]() {
        try {
            fn();
        } catch (...) {
            const std::lock_guard<std::mutex> lock(error_lock);
            if (!error) error = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    for (int k = 1; k < n; ++k) pool.emplace_back(guarded);
    guarded();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

// fn(worker, begin, end) over [0, n) in chunks of `chunk` claimed from an atomic counter by up to `threads`
// workers (no more than there are chunks). Joins instead of OpenMP barriers: on a busy machine spinning team
// barriers cost more than the work of a small case. Worker ids are 0 .. workers - 1.
template <typename Fn>
void parallel_for(int threads, int64_t n, int64_t chunk, Fn&& fn) {
    if (n <= 0) return;
    const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, (n + chunk - 1) / chunk)));
    if (workers == 1) {
        fn(0, int64_t{0}, n);
        return;
    }
    std::atomic<int64_t> next{0};
    std::atomic<int> id{0};
    run_threads(workers, [&]() {
        const int me = id++;
        for (int64_t b = next.fetch_add(chunk); b < n; b = next.fetch_add(chunk)) fn(me, b, std::min(n, b + chunk));
    });
}

// body(i) for each i in [0, n), one item at a time: for independent items, whose order never changes a result.
template <typename Body>
void parallel_for_each(int threads, int64_t n, Body&& body) {
    parallel_for(threads, n, 1, [&](int, int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) body(i);
    });
}

}  // namespace fewshot_da
