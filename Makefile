# Kernel build and test helpers for bort_infer._C (see csrc/).
PYTHON ?= python
ASAN_DIR := build/asan
KERNEL_TESTS := tests/test_kernels.py tests/test_custom_ops.py
# Under the sanitizers: the kernel tests, the Python-free library's and the op fuzzer (its worker processes inherit
# the preloaded runtimes and BORT_INFER_C_DIR). BORT_INFER_FUZZ_EXAMPLES bounds the fuzzed graphs: 10,000 here, where
# the sanitizers see them (a plain pytest run judges 2,000 by default).
ASAN_TESTS := $(KERNEL_TESTS) tests/test_ops_library.py tests/fuzz
BORT_INFER_FUZZ_EXAMPLES ?= 10000

.PHONY: kernels kernels-test asan

# In-place optimised build (bort_infer/_C*.so).
kernels:
	$(PYTHON) setup.py build_ext --inplace

kernels-test: kernels
	$(PYTHON) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)

# Address + undefined-behaviour sanitizer build in $(ASAN_DIR) (setup.py honours BORT_INFER_SANITIZE=1),
# then the kernel tests against it. Python itself is not built with ASan, so libasan is preloaded;
# leak checking is off because the interpreter leaks by design. UBSan findings abort the run.
asan:
	BORT_INFER_SANITIZE=1 $(PYTHON) setup.py build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)-tmp --force
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	BORT_INFER_C_DIR=$(ASAN_DIR) BORT_INFER_FUZZ_EXAMPLES=$(BORT_INFER_FUZZ_EXAMPLES) \
	$(PYTHON) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)
