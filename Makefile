# mailshim: `make` builds, `make run` starts a demo, `make test` runs every test.
# SAN=1 builds (and tests) with AddressSanitizer and UndefinedBehaviorSanitizer.

CC       ?= cc
SSL_INC  := /usr/include/android
# Debian's multiarch directory (x86_64-linux-gnu, aarch64-linux-gnu, ...).
ARCH_DIR := $(or $(shell $(CC) -print-multiarch 2>/dev/null),x86_64-linux-gnu)
SSL_LIB  := /usr/lib/$(ARCH_DIR)/android
VERSION  := 0.1.0

# `override`: the flags the code needs stay when a packager passes its own
# CFLAGS or LDFLAGS on the command line (make CFLAGS="$(dpkg-buildflags ...)").
CFLAGS   ?= -O2 -g
override CFLAGS += -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -D_GNU_SOURCE -DMAILSHIM_VERSION='"$(VERSION)"' -fno-strict-aliasing
SSL_CFLAGS := -I$(SSL_INC)
SSL_LIBS := -L$(SSL_LIB) -Wl,-rpath,$(SSL_LIB) -l:libssl.so.0 -l:libcrypto.so.0
# libev is linked as its core object alone (ev.o out of libev.a, see
# $(EV_O) below), never -lev: Debian's libev.so also exports libevent-style
# event_* functions, and libunbound's resolver thread, built on libevent,
# would call those and corrupt memory. libunbound uses nettle, not OpenSSL.
# The path is looked up when make reads this file: a target that installs
# packages first (run, test, bench, soak, fuzz) builds in a second make, run
# after deps.sh, so that on a fresh machine it sees the libev.a just installed.
LIBEV_A  := $(shell $(CC) -print-file-name=libev.a)
DNS_LIBS := -lunbound
# libidn2: the outbound relay's recipient domains in U-labels (IDNA2008).
IDN_LIBS := -lidn2
LIBS     := $(SSL_LIBS) $(DNS_LIBS) $(IDN_LIBS)

ifeq ($(SAN),1)
B        := build/san
override CFLAGS += -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -fno-omit-frame-pointer
override LDFLAGS += -fsanitize=address,undefined
BIN      := $(B)/mailshim
else
B        := build/rel
BIN      := mailshim
endif

# Modules with no I/O: unit-tested and fuzzed alone. The configuration
# parser is several files (config.h, config_int.h).
CONF     := config config_keys config_value config_addr config_check config_load
PURE     := buf pool $(CONF) smtp_client smtp_body smtp_server smtp_setup smtp_xclient proxy reason \
            dane http metrics tickets route
# The rest: sockets, TLS, events.
IO       := main generation worker super listener conn conn_log conn_open conn_relay \
            conn_events endpoint sockbio relay tls tls_keys tls_tickets verify log dns dns_setup upname uplookup \
            metricsd handshake proxyin upsetup upxclient mxsess mxsess_cmd mxhop mxroute
OBJS     := $(addprefix $(B)/,$(addsuffix .o,$(PURE) $(IO)))
EV_O     := $(B)/ev.o
# The DNS module's test driver (tests/dnstest/, run by test_dns.py).
DNSPROBE := $(B)/dnsprobe
UNIT     := $(patsubst tests/unit/%.c,$(B)/unit/%,$(wildcard tests/unit/test_*.c))

.PHONY: all deps run test unit units clean fuzz soak bench check-ldd

all: $(BIN) check-ldd

$(BIN): $(OBJS) $(EV_O)
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(EV_O) $(LIBS)

$(EV_O): $(LIBEV_A) | $(B)
	cd $(B) && ar x $(LIBEV_A) ev.o && touch ev.o

# The TLS library must be BoringSSL, never the system's OpenSSL 3 (which
# libldns, libgetdns and others would pull in); libev only as ev.o.
check-ldd: $(BIN)
	@if ldd $(BIN) | grep -Eq 'lib(ssl|crypto)\.so\.3'; then \
		echo "$(BIN) links OpenSSL 3; it must link BoringSSL only" >&2; exit 1; fi
	@if ldd $(BIN) | grep -q 'libev\.so'; then \
		echo "$(BIN) links libev.so; it must link libev's ev.o only" >&2; exit 1; fi

$(B)/%.o: shim/%.c | $(B)
	$(CC) $(CFLAGS) $(SSL_CFLAGS) -MMD -MP -c -o $@ $<

$(B):
	mkdir -p $(B)/unit

# Unit tests link only the pure modules (no TLS library, no libev).
$(B)/unit/%: tests/unit/%.c tests/unit/unit.h $(addprefix $(B)/,$(addsuffix .o,$(PURE))) | $(B)
	$(CC) $(CFLAGS) $(LDFLAGS) -Ishim -o $@ $< $(addprefix $(B)/,$(addsuffix .o,$(PURE)))

CONF_O   := $(addprefix $(B)/,$(addsuffix .o,$(CONF)))
$(DNSPROBE): tests/dnstest/dnsprobe.c $(B)/dns.o $(B)/dns_setup.o $(CONF_O) $(B)/log.o \
    $(EV_O) | $(B)
	$(CC) $(CFLAGS) $(LDFLAGS) -Ishim -o $@ $< $(B)/dns.o $(B)/dns_setup.o $(CONF_O) \
		$(B)/log.o $(EV_O) $(DNS_LIBS)

# libFuzzer targets: the pure modules built with clang's fuzzer runtime.
FUZZ_TIME ?= 30
FUZZERS  := config proxy smtp dane http route
FZ       := build/fuzz
PURE_SRC := $(addprefix shim/,$(addsuffix .c,$(PURE)))
$(FZ)/fuzz_%: tests/fuzz/fuzz_%.c $(PURE_SRC) $(wildcard shim/*.h)
	@mkdir -p $(FZ)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -Ishim -o $@ $< $(PURE_SRC)

fuzz: deps
	@$(MAKE) --no-print-directory $(addprefix $(FZ)/fuzz_,$(FUZZERS))
	@sh tests/fuzz/run.sh $(FUZZ_TIME) $(FUZZERS)

deps:
	@sh tests/deps.sh

unit: $(UNIT)
	@sh tests/run-unit.sh $(UNIT)

run: deps
	@$(MAKE) --no-print-directory all
	@sh tests/run-demo.sh

# Every test: release build, sanitizer build, fuzzing (tests/suite.sh).
# `make test SAN=1` runs the whole integration suite, slow tests included,
# on the sanitizer build (and the fuzzers) instead.
test: deps
	@$(MAKE) --no-print-directory SAN= all units
	@$(MAKE) --no-print-directory SAN=1 all units
	@$(MAKE) --no-print-directory SAN= $(addprefix $(FZ)/fuzz_,$(FUZZERS))
	@SAN_FULL=$(SAN) sh tests/suite.sh

units: $(UNIT) $(DNSPROBE)

clean:
	rm -rf build mailshim

-include $(OBJS:.o=.d)

# Side-by-side figures against stunnel, hitch and haproxy, the BoringSSL
# floor and the targets (tests/bench/README.md): build/bench/results.txt and
# build/bench/bench.svg. BENCH_QUICK=1 for a short trial, BENCH_PROFILE=1
# adds strace -c and perf of one mailshim worker.
bench: deps
	@$(MAKE) --no-print-directory all build/bench/floor
	@MAILSHIM=$(abspath $(BIN)) sh tests/bench/run.sh

# The bench's floor: whole TLS handshakes in memory, with mailshim's
# BoringSSL and its TLS defaults.
build/bench/floor: tests/bench/floor.c shim/tls_policy.h
	@mkdir -p $(@D)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -Ishim $(SSL_CFLAGS) -o $@ $< $(SSL_LIBS)

# Soak with integrity checks. Override: SOAK_MESSAGES (1000), SOAK_CONCURRENCY (50),
# SOAK_MAX_SIZE (10485760), SOAK_ONLY, SOAK_SEED, SOAK_TIMEOUT, SOAK_KEEP.
soak: deps
	@$(MAKE) --no-print-directory all
	@MAILSHIM=$(abspath $(BIN)) /usr/bin/python3 tests/soak/soak.py

# `make install` (PREFIX=/usr/local, DESTDIR for staging): the binary, the
# man pages, the systemd unit (its paths rewritten to PREFIX) and an example
# configuration in /etc/mailshim/conf.d.example. /etc/mailshim/conf.d itself
# is never created or touched: the configuration in use is the admin's.
PREFIX   ?= /usr/local
SBINDIR  := $(PREFIX)/sbin
MANDIR   := $(PREFIX)/share/man
UNITDIR  := $(PREFIX)/lib/systemd/system
CONFDIR  := /etc/mailshim

.PHONY: install
install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR)/conf.d.example
	install -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/mailshim
	install -m 0644 man/mailshim.8 $(DESTDIR)$(MANDIR)/man8/mailshim.8
	install -m 0644 man/mailshim.conf.5 $(DESTDIR)$(MANDIR)/man5/mailshim.conf.5
	sed 's|/usr/sbin/mailshim|$(SBINDIR)/mailshim|g' packaging/mailshim.service \
		>$(DESTDIR)$(UNITDIR)/mailshim.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mailshim.service
	install -m 0644 packaging/conf.d.example/*.conf $(DESTDIR)$(CONFDIR)/conf.d.example/
