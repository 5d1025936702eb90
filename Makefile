# One gate for every commit: make check.
GO ?= go
BIN := $(CURDIR)/.bin

.PHONY: check fmt vet staticcheck test tidy tools build e2e

check: fmt vet staticcheck tidy test

tools:
	./scripts/install-tools.sh

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	@test -x $(BIN)/staticcheck || ./scripts/install-tools.sh staticcheck
	$(BIN)/staticcheck ./...

tidy:
	@cp go.mod /tmp/go.mod.check; cp go.sum /tmp/go.sum.check; \
	$(GO) mod tidy; \
	if ! cmp -s go.mod /tmp/go.mod.check || ! cmp -s go.sum /tmp/go.sum.check; then \
		echo "go mod tidy changed go.mod/go.sum; commit the result"; exit 1; fi

# The end-to-end tests run after the others, alone: they push real traffic
# through the kernel and must not compete with the race detector for the CPU.
# A failing end-to-end run is repeated once, loudly: on a loaded machine the
# kernel may drop packets from a capture ring (the test logs
# pcap_capture_kernel_drops_total next to the failures), while a bug fails
# twice.
test:
	$(GO) test -race $$($(GO) list ./... | grep -v /e2e)
	$(GO) test -p 1 -count=1 ./e2e/... || { \
		echo "=== end-to-end tests FAILED; running them once more to tell a flake from a bug ==="; \
		$(GO) test -p 1 -count=1 ./e2e/...; }
