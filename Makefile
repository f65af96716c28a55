# Two commands for a fresh Debian machine (as root): `make demo` and `make test`.
# Every set-up step lives here so that CI on a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEBS   := fuse3 s3fs rsync

.PHONY: setup debs venv helper demo test bench clean image image-base

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
	$(BIN)/pip install -q --disable-pip-version-check -e '.[all,dev]'
	touch $@

demo: setup
	$(BIN)/pailfs demo

test: setup
	$(BIN)/pytest -q tests

bench: setup
	$(BIN)/pailfs bench

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

# The CSI plugin's container image, from a clean checkout, as root: a minimal
# Debian made by debootstrap from Debian's archive (no container registry is
# needed), then the Containerfile with buildah. `make image IMAGE=registry/pailfs:tag`.
IMAGE       ?= localhost/pailfs:latest
BASE_IMAGE  ?= localhost/pailfs-base:bookworm
DEBIAN      ?= bookworm
MIRROR      ?= http://deb.debian.org/debian
IMAGE_TOOLS := buildah podman debootstrap runc
# CA certificates pip trusts inside the build (this machine's; never copied into the image)
CA_BUNDLE   ?= /etc/ssl/certs/ca-certificates.crt
# runc: crun refuses this machine's hybrid cgroup layout
RUNTIME     ?= runc

image: image-base
	buildah bud --layers --network host --runtime $(RUNTIME) --secret id=ca-bundle,src=$(CA_BUNDLE) \
		-f Containerfile --build-arg BASE=$(BASE_IMAGE) -t $(IMAGE) .
	@echo "built $(IMAGE): $$(buildah images --format '{{.Size}}' $(IMAGE))"

image-base:
	@missing=""; for t in $(IMAGE_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@if podman image exists $(BASE_IMAGE); then \
		echo "base image $(BASE_IMAGE) exists"; \
	else \
		set -e; trap 'rm -rf build/rootfs build/base.tar' EXIT; \
		rm -rf build/rootfs; mkdir -p build; \
		debootstrap --variant=minbase --include=python3,ca-certificates $(DEBIAN) build/rootfs $(MIRROR); \
		rm -rf build/rootfs/var/cache/apt/archives/*.deb build/rootfs/var/lib/apt/lists/* \
			build/rootfs/usr/share/doc/* build/rootfs/usr/share/man/* build/rootfs/usr/share/info/*; \
		tar -C build/rootfs --numeric-owner -cf build/base.tar .; \
		podman import build/base.tar $(BASE_IMAGE); \
	fi
