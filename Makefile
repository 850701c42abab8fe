# Run as root on a fresh Debian 12 machine: `make demo`, `make test`, and `make install` (or
# scripts/install) to install meshvpn itself: /opt/meshvpn, /usr/local/bin/meshvpn and the units.
# `make setup` is idempotent: it installs only missing system packages and reinstalls the
# Python package only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
RESOLVED_ROOT := .lab/systemd-resolved
APT_PACKAGES := iproute2 nftables iperf3 iputils-ping coturn stun-client tcpdump libsystemd-dev pkg-config gcc python3-dev libsodium-dev chromium dbus-daemon mount postgresql bind9-dnsutils openssl miniupnpd
# Installed by `make bench` only, so `make test` stays quick; without recommends (wireguard-tools
# would pull in a kernel image). Pass options with BENCH_ARGS="--seconds 3 --runs 1", and to the
# traversal matrix with MATRIX_ARGS="--pairs random-ports:port-preserving --runs 20" (and
# "--log-level debug --keep DIR" to keep every program's debug log).
BENCH_PACKAGES := iperf3 iputils-ping quicktun wireguard-go wireguard-tools tinc nebula
APT_INSTALL_FLAGS ?=
# What `make install` needs to build systemd-python and the native data path (libsodium).
INSTALL_PACKAGES := libsystemd-dev pkg-config gcc python3-dev libsodium-dev
PREFIX ?= /opt/meshvpn
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system

.PHONY: setup system-packages test demo bench-packages bench matrix install install-systemd fuzz

setup: system-packages $(VENV)/.installed $(RESOLVED_ROOT)/.extracted

# systemd-resolved for the lab test of the names' registration, unpacked into the work tree and
# run only inside a test namespace with its own D-Bus: installing the package would take over
# this machine's /etc/resolv.conf.
$(RESOLVED_ROOT)/.extracted:
	rm -rf $(RESOLVED_ROOT) && mkdir -p $(RESOLVED_ROOT)
	cd $(RESOLVED_ROOT) && (apt-get download systemd-resolved || (apt-get update && apt-get download systemd-resolved))
	dpkg -x $(RESOLVED_ROOT)/systemd-resolved_*.deb $(RESOLVED_ROOT)/root
	touch $@

system-packages:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_INSTALL_FLAGS) $$missing; \
	fi

$(VENV)/.installed: pyproject.toml setup.py $(wildcard meshvpn/_fastpath*.c meshvpn/_fastpath*.h)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,systemd,metrics,console,qr,postgresql,upnp]'
	touch $@

# The suite in two passes. First every test not marked `alone`, on TEST_WORKERS pytest-xdist
# workers: lab tests mostly wait on timers and daemons, so more workers than cores pay, and each
# worker's namespaces carry its own PID. `--dist loadscope` keeps a module's tests on one worker,
# in order (a module's shared mesh is built once); modules go out in collection order, so the
# long integration and lab modules start first and the many short unit modules fill the end.
# Then the tests marked `alone`, which compare a rate with a calm one, one after the other with
# nothing else of the suite running. Both passes run; either failing fails the target.
TEST_WORKERS ?= 4
PYTEST := $(VENV)/bin/python -m pytest -q

test: setup
	@status=0; \
	$(PYTEST) -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -m "not alone" || status=$$?; \
	$(PYTEST) -m alone || status=$$?; \
	exit $$status

# Every network decoder fuzzed with a million inputs or more, in at most FUZZ_SECONDS (opt-in;
# the unit suite runs a small slice of the same targets).
FUZZ_SECONDS ?= 600
fuzz: setup
	$(VENV)/bin/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS) --min-total 1000000

demo: setup
	$(VENV)/bin/python -m meshvpn.lab.demo

bench-packages:
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(BENCH_PACKAGES)" APT_INSTALL_FLAGS=--no-install-recommends

bench: setup bench-packages
	$(VENV)/bin/python -m meshvpn.bench $(BENCH_ARGS)

matrix: setup bench-packages
	$(VENV)/bin/python -m meshvpn.bench.matrix $(MATRIX_ARGS)

# The whole install: build prerequisites, the package in its own venv, the command and the units;
# then it says which data path was built. PREFIX, BINDIR and UNITDIR move it elsewhere.
install:
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(INSTALL_PACKAGES)"
	test -x $(PREFIX)/bin/python || $(PYTHON) -m venv $(PREFIX)
	rm -rf build  # setuptools builds in ./build and never removes a module that has since moved
	$(PREFIX)/bin/python -m pip install --quiet --upgrade '.[systemd,metrics,console,qr,upnp]'
	mkdir -p $(BINDIR)
	ln -sfn $(PREFIX)/bin/meshvpn $(BINDIR)/meshvpn
	@$(MAKE) --no-print-directory install-systemd UNITDIR=$(UNITDIR)
	@cd / && $(PREFIX)/bin/python -c 'from meshvpn.node.datapath import fastpath; print("meshvpn installed; data path:", fastpath.DATA_PATH_TEXT)'

# Copies the units; they run /usr/local/bin/meshvpn with the configs in /etc/meshvpn.
install-systemd:
	mkdir -p $(UNITDIR)
	install -m 0644 systemd/meshvpn.service systemd/meshvpn-coord.service systemd/meshvpn-relay.service $(UNITDIR)/
	if [ "$(UNITDIR)" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
