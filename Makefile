# Two commands for a fresh Debian machine (as root): `make demo` and `make test`.
# Every set-up step lives here so that CI on a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEBS   := fuse3 s3fs rsync

.PHONY: setup debs venv helper demo test bench clean

setup: debs venv helper

# mount(8) runs /sbin/mount.fuse.pailfs for `mount -t fuse.pailfs` and fstab entries.
helper: venv
	@if [ "$$(id -u)" = 0 ] && [ -d /sbin ]; then ln -sf "$(CURDIR)/$(BIN)/mount.pailfs" /sbin/mount.fuse.pailfs; fi

# Debian packages: fusermount3 for non-root mounts, s3fs-fuse as a benchmark peer, rsync
# for the read-write mount's round-trip tests.
debs:
	@missing=""; \
	command -v fusermount3 >/dev/null || missing="$$missing fuse3"; \
	command -v s3fs >/dev/null || missing="$$missing s3fs"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/pailfs demo

test: setup
	$(BIN)/pytest -q tests

bench: setup
	$(BIN)/pailfs bench

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
