# segpipe — build everything with `make`.
#
#   make                 library (static + shared), CLI, unit tests
#   make check           every test: make test, make realistic, make asan (CI)
#   make test            the everyday tier of the suite (tests/run.sh; minutes)
#   make realistic       the realistic tier: journeys at real sizes, upstream references
#   make asan            the everyday tier built with ASan + UBSan
#   make fuzz            bounded libFuzzer run of the NIfTI reader (clang)
#   make bench           benchmarks (not part of the test suite)
#   make install PREFIX=/usr/local   (ONNX Runtime privately in PREFIX/lib/segpipe/)
#   make deb             Debian packages by role in build/deb/ (docs/packaging.md)
#   make deb-check       install them into a scratch root, run them, remove them
#   make man             man pages from the --help texts (build/man/)
#   make cuda            optional GPU window kernels, build/libsegpipe_cuda.so (nvcc)
#
# ONNX Runtime comes from, in order: pkg-config libonnxruntime,
# $(ONNXRUNTIME_DIR), or third_party/onnxruntime (scripts/install-deps.sh).

PREFIX ?= /usr/local
CC ?= cc
SANITIZE ?= 0
BUILD ?= build

ifeq ($(SANITIZE),1)
  BUILD := build-asan
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif

ORT_LOCAL := third_party/onnxruntime
ifneq ($(shell pkg-config --exists libonnxruntime 2>/dev/null && echo yes),)
  ORT_CFLAGS := $(shell pkg-config --cflags libonnxruntime)
  ORT_LIBS := $(shell pkg-config --libs libonnxruntime)
  ORT_STAMP :=
else ifneq ($(ONNXRUNTIME_DIR),)
  ORT_INC := $(firstword $(wildcard $(ONNXRUNTIME_DIR)/include/onnxruntime) $(ONNXRUNTIME_DIR)/include)
  ORT_CFLAGS := -I$(ORT_INC)
  ORT_LIBS := -L$(ONNXRUNTIME_DIR)/lib -Wl,-rpath,$(abspath $(ONNXRUNTIME_DIR)/lib) -lonnxruntime
  ORT_STAMP :=
else
  ORT_CFLAGS := -I$(ORT_LOCAL)/include
  # no absolute path in the binaries: build tree (build*/ -> third_party/) or
  # installed (<prefix>/bin or lib -> <prefix>/lib, where make install puts it)
  ORT_LIBS := -L$(ORT_LOCAL)/lib -Wl,-rpath,'$$ORIGIN/../third_party/onnxruntime/lib' -l:libonnxruntime.so.1
  ORT_STAMP := $(ORT_LOCAL)/lib/libonnxruntime.so.1
  # installed: ONNX Runtime in the private folder PREFIX/lib/segpipe/ (not on the
  # system's library path, so no other program picks this copy up by soname);
  # the installed CLI and library are relinked with run paths to it only
  ORT_INSTALL := $(wildcard $(ORT_LOCAL)/lib/libonnxruntime_providers_*.so)
  ORT_INST_BIN := -L$(ORT_LOCAL)/lib -Wl,-rpath,'$$ORIGIN/../lib/segpipe' -l:libonnxruntime.so.1
  ORT_INST_LIB := -L$(ORT_LOCAL)/lib -Wl,-rpath,'$$ORIGIN/segpipe' -l:libonnxruntime.so.1
endif
ORT_INST_BIN ?= $(ORT_LIBS)
ORT_INST_LIB ?= $(ORT_LIBS)

DEPS_STAMP := $(BUILD)/.deps-ok
WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -pthread $(WARN) $(CFLAGS) $(SANFLAGS) -ffile-prefix-map=$(CURDIR)=. \
  -Iinclude -Isrc $(ORT_CFLAGS) \
  -DSP_BUILD_FLAGS="\"$(strip $(CC) $(CFLAGS) $(SANFLAGS))\""
# Optional slim builds: NO_FFMPEG=1 (video from/to frame folders only),
# NO_HEIF=1 (no HEIC photos); e.g. for a machine without those libraries.
# FFmpeg is opened with dlopen when a video file is first read or written
# (src/io/av_load.h): nothing links it, so FF_LIBS stays empty
FF_LIBS :=
HEIF_LIBS := -lheif
ifeq ($(NO_FFMPEG),1)
  ALL_CFLAGS += -DSP_NO_FFMPEG
  FF_LIBS :=
endif
ifeq ($(NO_HEIF),1)
  ALL_CFLAGS += -DSP_NO_HEIF
  HEIF_LIBS :=
endif
# DICOM series input through GDCM, DICOM-SEG output through DCMTK (C++; NO_DICOM=1 leaves both out;
# libzip stays: .npz probabilities are written with it)
CXX ?= c++
DICOM_LIBS := -ldcmseg -ldcmfg -ldcmiod -ldcmdata -loflog -lofstd -lstdc++
DICOM_SRC := src/io/dicom_seg.cc src/io/dicom_rtstruct.cc
# GDCM's series reader (src/io/dicom.cc) is a shared object of its own,
# opened on the first series (src/io/gdcm_load.c): GDCM reads its data
# dictionary when it is mapped, which every process paid at start
GDCM_LIBS := -lgdcmMSFF -lgdcmDSED -lgdcmCommon -lstdc++
GDCM_READER := $(BUILD)/libsegpipe_gdcm.so
# `segpipe dicom-node` (src/cli/dicom_node.cc): DCMTK's networking, in the CLI only
NODE_SRC := src/cli/dicom_node.cc
NODE_LIBS := -ldcmnet
ifeq ($(NO_DICOM),1)
  ALL_CFLAGS += -DSP_NO_DICOM
  DICOM_LIBS :=
  DICOM_SRC :=
  GDCM_READER :=
  NODE_SRC :=
  NODE_LIBS :=
endif
ALL_CXXFLAGS := -std=c++17 -D_GNU_SOURCE -fPIC -pthread -Wall -Wextra -Wno-unused-parameter $(CFLAGS) $(SANFLAGS) \
  -ffile-prefix-map=$(CURDIR)=. -Iinclude -Isrc -I/usr/include/gdcm-3.0
SYS_LIBS := $(FF_LIBS) $(DICOM_LIBS) -lzip -lmicrohttpd -ljpeg -lpng -lwebp $(HEIF_LIBS) -lcjson -ldeflate -lz -lm -ldl -pthread
LIBS := $(ORT_LIBS) $(SYS_LIBS)
# hardened links for what gets installed (Debian's defaults: full RELRO, no lazy binding)
LDHARDEN := -Wl,-z,relro -Wl,-z,now -Wl,--as-needed

LIB_SRC := $(wildcard src/core/*.c src/io/*.c src/pipeline/*.c src/runtime/*.c src/server/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(DICOM_SRC:%.cc=$(BUILD)/%.o) $(BUILD)/src/server/ui_assets.o
CLI_SRC := $(wildcard src/cli/*.c)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o) $(NODE_SRC:%.cc=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/unit/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

.PHONY: all test realistic check asan fuzz bench install clean deps cuda deb deb-check man FORCE attack
# (the installed CLI and library, relinked for PREFIX/lib/segpipe/, and the man
# pages are made here too: concurrent `make install`s then only copy them)
all: $(BUILD)/segpipe $(BUILD)/libsegpipe.a $(BUILD)/libsegpipe.so $(BUILD)/libsegpipe_test.so $(BUILD)/test_unit $(GDCM_READER) \
  $(BUILD)/inst/segpipe $(BUILD)/inst/libsegpipe.so.0 $(BUILD)/man/.stamp

# Install what is missing (idempotent; a no-op when everything is there).
# (one install-deps run at a time: with make -j the stamps below wait for
# $(DEPS_STAMP), so apt-get is never started twice in parallel)
$(ORT_LOCAL)/lib/libonnxruntime.so.1: | $(DEPS_STAMP)
	@test -f $@ || bash scripts/install-deps.sh

$(DEPS_STAMP): scripts/install-deps.sh
	@mkdir -p $(BUILD)
	bash scripts/install-deps.sh
	@touch $@

# `segpipe version` names the commit it was built from (-D, a short hash and
# "-dirty"; never a path); the stamp changes only when the commit does
GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell \
  git rev-parse HEAD >/dev/null 2>&1 && ! git diff --quiet HEAD -- 2>/dev/null && echo -dirty)
$(BUILD)/commit.txt: FORCE
	@mkdir -p $(BUILD)
	@echo '$(GIT_COMMIT)' | cmp -s - $@ || echo '$(GIT_COMMIT)' > $@
$(BUILD)/src/cli/main.o: $(BUILD)/commit.txt
$(BUILD)/src/cli/main.o: ALL_CFLAGS += -DSP_GIT_COMMIT='"$(GIT_COMMIT)"'

$(BUILD)/%.o: %.c $(DEPS_STAMP) $(ORT_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# The web page's files (ui/, and niivue's bundle from install-deps) embedded
# with .incbin: the library serves them without a share folder (docs/ui.md).
NIIVUE := third_party/niivue/niivue.umd.js
$(NIIVUE): | $(DEPS_STAMP)
	@test -f $@ || bash scripts/install-deps.sh

$(BUILD)/src/server/ui_assets.o: src/server/ui_assets.S $(wildcard ui/*) $(NIIVUE) $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) -c $< -o $@

$(BUILD)/%.o: %.cc $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(ALL_CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libsegpipe_gdcm.so: $(BUILD)/src/io/dicom.o
	$(CXX) -shared $(SANFLAGS) $(LDHARDEN) -o $@ $< $(GDCM_LIBS) -pthread

$(BUILD)/libsegpipe.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

# libsegpipe.so exports the public API only: the functions declared in
# include/segpipe.h (the version script is made from the header, so the two
# cannot drift); everything else is local. The tests' ctypes references to
# internal stages use libsegpipe_test.so, the same objects with every symbol.
$(BUILD)/segpipe.map: include/segpipe.h
	@mkdir -p $(BUILD)
	{ echo '{ global:'; grep -oE '\bsp_[a-z0-9_]+ *\(' $< | tr -d ' (' | sort -u | sed 's/$$/;/'; \
	  echo 'local: *; };'; } > $@

$(BUILD)/libsegpipe.so: $(LIB_OBJ) $(BUILD)/segpipe.map
	$(CC) -shared -Wl,-soname,libsegpipe.so.0 -Wl,--version-script=$(BUILD)/segpipe.map $(SANFLAGS) \
	  -o $@ $(LIB_OBJ) $(LIBS)

$(BUILD)/libsegpipe_test.so: $(LIB_OBJ)
	$(CC) -shared $(SANFLAGS) -o $@ $^ $(LIBS)

# the CLI alone talks to Redis (segpipe submit / worker / jobs): hiredis, and signs queue entries: libcrypto
$(BUILD)/segpipe: $(CLI_OBJ) $(BUILD)/libsegpipe.a
	$(CC) $(SANFLAGS) -o $@ $^ $(NODE_LIBS) $(LIBS) -lhiredis -lcrypto

$(BUILD)/test_unit: $(TEST_OBJ) $(BUILD)/libsegpipe.a
	$(CC) $(SANFLAGS) -o $@ $^ $(LIBS)

# Optional: the sliding window's GPU kernels (docs/gpu.md), loaded at run
# time for --device cuda only; libsegpipe never links CUDA. cudart is linked
# statically, so the library needs only the driver (libcuda) where it runs.
NVCC ?= $(firstword $(shell command -v nvcc 2>/dev/null) /usr/local/cuda/bin/nvcc)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90
cuda: $(BUILD)/libsegpipe_cuda.so

$(BUILD)/libsegpipe_cuda.so: src/pipeline/window_cuda.cu src/pipeline/window_cuda.h
	@mkdir -p $(BUILD)
	$(NVCC) -O3 -std=c++17 -shared -cudart static $(CUDA_ARCH) -Xcompiler -fPIC,-fvisibility=hidden \
	  -Xcompiler -ffile-prefix-map=$(CURDIR)=. -o $@ $<

test: all
	BUILD=$(BUILD) bash tests/run.sh

realistic: all
	BUILD=$(BUILD) bash tests/run.sh --tier realistic

asan:
	$(MAKE) SANITIZE=1 test

# every test: the everyday tier, the realistic tier, the everyday tier under
# the sanitizers (docs/testing.md); what CI runs
check:
	$(MAKE) test
	$(MAKE) realistic
	$(MAKE) asan

# the attack suite at full scale: time and peak memory per case (docs/security.md)
attack: all
	BUILD=$(BUILD) /usr/bin/python3 tests/attack/run.py

fuzz:
	bash tests/fuzz/run.sh

bench: all
	bash bench/run.sh

# What `make install` and the packages put in place: the CLI and libsegpipe
# relinked with run paths into PREFIX/lib/segpipe/ only (the build tree's
# copies also point into third_party/), hardened; man pages from --help.
$(BUILD)/inst/segpipe: $(CLI_OBJ) $(BUILD)/libsegpipe.a
	@mkdir -p $(dir $@)
	$(CC) $(SANFLAGS) $(LDHARDEN) -o $@ $^ $(NODE_LIBS) $(ORT_INST_BIN) $(SYS_LIBS) -lhiredis -lcrypto

$(BUILD)/inst/libsegpipe.so.0: $(LIB_OBJ) $(BUILD)/segpipe.map
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,libsegpipe.so.0 -Wl,--version-script=$(BUILD)/segpipe.map $(SANFLAGS) $(LDHARDEN) \
	  -o $@ $(LIB_OBJ) $(ORT_INST_LIB) $(SYS_LIBS)

# segpipe(1) and segpipe-COMMAND(1) made from what `--help` prints, so the
# two cannot drift (tests/py/test_man.py reads them back)
man: $(BUILD)/man/.stamp
$(BUILD)/man/.stamp: $(BUILD)/segpipe tools/dev/help2man.py
	rm -rf $(BUILD)/man
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) \
	  python3 tools/dev/help2man.py $(BUILD)/segpipe $(BUILD)/man '$(VERSION)'
	@touch $@

ORT_CORE := $(if $(ORT_STAMP),$(ORT_LOCAL)/lib/libonnxruntime.so)
install: all $(BUILD)/inst/segpipe $(BUILD)/inst/libsegpipe.so.0 man
	install -d $(DESTDIR)$(PREFIX)/lib/segpipe $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	install -m 644 include/segpipe.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libsegpipe.a $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(BUILD)/inst/libsegpipe.so.0 $(DESTDIR)$(PREFIX)/lib/libsegpipe.so.0
	ln -sf libsegpipe.so.0 $(DESTDIR)$(PREFIX)/lib/libsegpipe.so
	install -m 755 $(BUILD)/inst/segpipe $(DESTDIR)$(PREFIX)/bin/
	[ ! -f $(BUILD)/libsegpipe_cuda.so ] || install -m 644 $(BUILD)/libsegpipe_cuda.so $(DESTDIR)$(PREFIX)/lib/
	[ -z "$(GDCM_READER)" ] || install -m 644 $(GDCM_READER) $(DESTDIR)$(PREFIX)/lib/segpipe/
	install -d $(DESTDIR)$(PREFIX)/share/segpipe/models $(DESTDIR)$(PREFIX)/share/doc/segpipe/docs/img
	for m in demo-ct demo-rooms demo-matte demo-shapes; do \
	  install -d $(DESTDIR)$(PREFIX)/share/segpipe/models/$$m && \
	  install -m 644 models/$$m/segpipe.json models/$$m/model.onnx $(DESTDIR)$(PREFIX)/share/segpipe/models/$$m/; \
	  [ ! -f models/$$m/README.md ] || install -m 644 models/$$m/README.md $(DESTDIR)$(PREFIX)/share/segpipe/models/$$m/; \
	done
	install -m 644 README.md CHANGELOG.md $(DESTDIR)$(PREFIX)/share/doc/segpipe/
	install -m 644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/segpipe/docs/
	install -m 644 docs/img/*.png $(DESTDIR)$(PREFIX)/share/doc/segpipe/docs/img/
	install -m 644 $(BUILD)/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 packaging/bash-completion $(DESTDIR)$(PREFIX)/share/bash-completion/completions/segpipe
	[ -z "$(ORT_CORE)" ] || install -m 644 $(ORT_CORE) $(DESTDIR)$(PREFIX)/lib/segpipe/libonnxruntime.so.1
	[ -z "$(ORT_INSTALL)" ] || install -m 644 $(ORT_INSTALL) $(DESTDIR)$(PREFIX)/lib/segpipe/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@ORT_LIBS@|$(if $(ORT_CORE),-L$${libdir}/segpipe -l:libonnxruntime.so.1,$(ORT_LIBS))|' \
	    -e 's|@FF_LIBS@|$(FF_LIBS)|' -e 's|@HEIF_LIBS@|$(HEIF_LIBS)|' \
	    segpipe.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/segpipe.pc

# Debian packages by role (packaging/make-deb.sh; docs/packaging.md): segpipe,
# libsegpipe0, libsegpipe-dev, python3-segpipe in build/deb/, from
# `make install PREFIX=/usr`. The version is the latest git tag's (v1.2.3 ->
# 1.2.3, later commits -> 1.2.3+gitN.gHASH), else the header's.
VERSION := $(shell sed -n 's/#define SP_VERSION_STRING "\(.*\)"/\1/p' include/segpipe.h)
DEB_VERSION := $(or $(shell git describe --tags --match 'v[0-9]*' 2>/dev/null | \
  sed -e 's/^v//' -e 's/-\([0-9]*\)-g\([0-9a-f]*\)$$/+git\1.g\2/' -e 's/-/~/g'),$(VERSION))
deb: all
	rm -rf $(BUILD)/deb
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BUILD)/deb/stage PREFIX=/usr
	bash packaging/make-deb.sh $(BUILD)/deb '$(DEB_VERSION)'

# install the packages into a scratch root (an overlay of this system),
# run them, remove them, check that nothing stays; lintian when present
deb-check: deb
	bash packaging/deb-check.sh $(BUILD)/deb

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
