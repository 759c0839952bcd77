# Kiln - top-level build. `make run` and `make test` install what is missing
# (deploy/install-deps.sh), build, and run. Binaries go to $(BUILD)/bin.
#
#   make            build everything (optimised) into build/
#   make run        start nats-server (if none answers), dev provider, store, consumer, gateway
#   make test       unit + integration tests, built with ASan+UBSan into build/san/
#   make bench      the benchmark (optimised build)
#   make bench-http compares HTTP server libraries on the gateway's POST (bench/httplib)
#   make fuzz       every input parser under libFuzzer + ASan/UBSan, FUZZ_SECS (60) each (tests/fuzz)
#   make clean

BUILD ?= build
SAN ?= 0
OPT ?= -O2

PKGS := libnats libprotobuf-c rocksdb libcurl libcrypto jansson yajl libmicrohttpd libpng zlib
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CC ?= cc
WARN := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wshadow -Wformat=2
CFLAGS := -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) -I common -I producer -I $(BUILD)/gen $(PKG_CFLAGS)
LDLIBS := $(PKG_LIBS) -lpthread -lm
ifeq ($(SAN),1)
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

GEN := $(BUILD)/gen/kiln.pb-c.c $(BUILD)/gen/kiln.pb-c.h
COMMON_SRC := $(wildcard common/*.c)
COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/kiln.pb-c.o
obj_of = $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard $(1)/*.c))
# The client library; the kiln CLI (producer/cli/) links it like any user.
CLIENT_OBJ := $(call obj_of,producer)

BINS := $(BUILD)/bin/kiln-gateway $(BUILD)/bin/kiln-consumer $(BUILD)/bin/kiln-store \
        $(BUILD)/bin/kiln $(BUILD)/bin/kiln-devprovider

.PHONY: all deps run test unit-test it-test bench bench-http fuzz chaos clean kiln-gateway kiln-consumer kiln-store kiln kiln-devprovider tests
all: $(BINS)

kiln-gateway: $(BUILD)/bin/kiln-gateway
kiln-consumer: $(BUILD)/bin/kiln-consumer
kiln-store: $(BUILD)/bin/kiln-store
kiln: $(BUILD)/bin/kiln
kiln-devprovider: $(BUILD)/bin/kiln-devprovider

# Installs missing Debian packages (idempotent; quick when nothing is missing).
deps:
	@deploy/install-deps.sh

# One protoc-c run makes both files (grouped target: safe under -j).
$(BUILD)/gen/kiln.pb-c.c $(BUILD)/gen/kiln.pb-c.h &: proto/kiln.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/kiln.proto

$(BUILD)/obj/gen/kiln.pb-c.o: $(BUILD)/gen/kiln.pb-c.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.c $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/lib/libkilncommon.a: $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BUILD)/lib/libkilnclient.a: $(CLIENT_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BUILD)/bin/kiln-gateway: $(call obj_of,gateway) $(BUILD)/lib/libkilncommon.a
$(BUILD)/bin/kiln-consumer: $(call obj_of,consumer) $(BUILD)/lib/libkilncommon.a
$(BUILD)/bin/kiln-store: $(call obj_of,store) $(BUILD)/lib/libkilncommon.a
$(BUILD)/bin/kiln-devprovider: $(call obj_of,devprovider) $(BUILD)/lib/libkilncommon.a
$(BUILD)/bin/kiln: $(call obj_of,producer/cli) $(BUILD)/lib/libkilnclient.a $(BUILD)/lib/libkilncommon.a
$(BINS):
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Tests: Criterion unit tests and integration tests against real daemons.
UNIT_OBJ := $(call obj_of,tests/unit)
IT_OBJ := $(call obj_of,tests/integration)
HARNESS_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/harness*.c))
# Unit tests link each component's objects except its main.o, so module
# functions (JSON mapping, directives, store keys, ...) are testable directly.
COMPONENT_OBJ := $(filter-out %/main.o,$(foreach d,gateway consumer store devprovider,$(call obj_of,$(d))))
$(BUILD)/bin/kiln-unit-tests: $(UNIT_OBJ) $(COMPONENT_OBJ) $(BUILD)/lib/libkilnclient.a $(BUILD)/lib/libkilncommon.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion
# Integration tests link the store's modules too: test_store_events drives
# store/events.c against a real KILN_EVENTS stream.
STORE_MODULE_OBJ := $(filter-out %/main.o,$(call obj_of,store))
$(BUILD)/bin/kiln-it-tests: $(IT_OBJ) $(HARNESS_OBJ) $(STORE_MODULE_OBJ) $(BUILD)/lib/libkilnclient.a $(BUILD)/lib/libkilncommon.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

tests: $(BINS) $(BUILD)/bin/kiln-unit-tests $(BUILD)/bin/kiln-it-tests

# `make test`: sanitizer build in build/san, then both suites.
test: deps
	$(MAKE) --no-print-directory -j2 BUILD=build/san SAN=1 OPT=-O1 tests
	tests/run.sh build/san/bin

unit-test: deps
	$(MAKE) --no-print-directory -j2 BUILD=build/san SAN=1 OPT=-O1 tests
	tests/run.sh build/san/bin unit

# `make chaos`: the chaos test alone, its faults going on for CHAOS_SECS,
# with CHAOS_CONSUMERS consumers (the second is spared by the faults);
# CHAOS_NATS_KILL=1 adds nats-server SIGKILL to them.
CHAOS_SECS ?= 300
CHAOS_CONSUMERS ?= 2
CHAOS_NATS_KILL ?= 0
chaos: deps
	$(MAKE) --no-print-directory -j2 BUILD=build/san SAN=1 OPT=-O1 tests
	KILN_CHAOS_SECS=$(CHAOS_SECS) KILN_CHAOS_CONSUMERS=$(CHAOS_CONSUMERS) \
	    KILN_CHAOS_NATS_KILL=$(CHAOS_NATS_KILL) \
	    tests/run.sh build/san/bin it --filter 'chaos/*'

run: deps all
	deploy/run-dev.sh $(BUILD)/bin

bench: deps
	$(MAKE) --no-print-directory -j2 BUILD=build/bench OPT="-O2 -DNDEBUG" all build/bench/bin/kiln-bench-limit build/bench/bin/kiln-bench
	bench/run.sh build/bench/bin

BENCH_OBJ = $(call obj_of,bench)
$(BUILD)/bin/kiln-bench-limit: $(BUILD)/obj/bench/limit.o $(BUILD)/lib/libkilncommon.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bin/kiln-bench: $(filter-out $(BUILD)/obj/bench/limit.o,$(BENCH_OBJ)) $(BUILD)/lib/libkilnclient.a $(BUILD)/lib/libkilncommon.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# kiln-bench-http (bench/httplib): libmicrohttpd, libevent's evhttp and, when
# libh2o-evloop is installed, h2o, each serving the gateway's POST /v1/jobs.
bench-http:
	@deploy/install-deps.sh bench-http
	$(MAKE) --no-print-directory -j2 BUILD=build/bench OPT="-O2 -DNDEBUG" build/bench/bin/kiln-bench-http
	bench/httplib/run.sh build/bench/bin

HTTP_CMP_PKGS := libmicrohttpd libevent libevent_pthreads
HTTP_CMP_DEFS :=
ifeq ($(shell pkg-config --exists libh2o-evloop 2>/dev/null && echo 1),1)
HTTP_CMP_PKGS += libh2o-evloop
HTTP_CMP_DEFS += -DKILN_HAVE_H2O
endif
$(BUILD)/obj/bench/httplib/http_cmp.o: bench/httplib/http_cmp.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(HTTP_CMP_DEFS) $(shell pkg-config --cflags $(HTTP_CMP_PKGS)) -MMD -MP -c $< -o $@
$(BUILD)/bin/kiln-bench-http: $(BUILD)/obj/bench/httplib/http_cmp.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs $(HTTP_CMP_PKGS)) -lpthread

# `make fuzz`: libFuzzer targets (tests/fuzz), built by clang with ASan and
# UBSan into build/fuzz; each runs FUZZ_SECS seconds from its seed corpus.
FUZZ_SECS ?= 60
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/bin/%,$(wildcard tests/fuzz/fuzz_*.c))
fuzz:
	@deploy/install-deps.sh fuzz
	$(MAKE) --no-print-directory -j2 BUILD=build/fuzz CC=clang SAN=1 \
	    OPT="-O1 -fsanitize=fuzzer-no-link" $(FUZZ_BINS)
	tests/fuzz/run.sh build/fuzz/bin $(FUZZ_SECS)

.SECONDARY: $(patsubst tests/fuzz/%.c,$(BUILD)/obj/tests/fuzz/%.o,$(wildcard tests/fuzz/fuzz_*.c))
$(BUILD)/bin/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(COMPONENT_OBJ) $(BUILD)/lib/libkilnclient.a $(BUILD)/lib/libkilncommon.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
