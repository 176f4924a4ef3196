# Sourced by every build, test and bench script. The Go build cache is keyed on these settings:
# a build, vet or test run with different ones recompiles all of Kubernetes (10-16 min on 2 cores),
# so they live in one place.
export CGO_ENABLED=0
export GOFLAGS="-trimpath -tags=netgo,osusergo,no_btrfs,no_zfs,no_devmapper,no_rdt"
KONE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KONE_ROOT
