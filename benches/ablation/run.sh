#!/usr/bin/env bash
# What each part of the retry engine costs a call, by taking it out: each patch in this
# directory removes one part (it breaks the contract, so it is never merged), and this
# script builds the `overhead` bench with it on a scratch worktree and counts the
# instructions per call of our `retry_layer` and `full_stack`, and of `bare` and the tower
# variants beside them, with callgrind (the difference between 20 000 and 10 000 calls).
#
#   benches/ablation/run.sh              # the tree as it is, each patch alone, then all
#                                        # but header-copy, then all
#   benches/ablation/run.sh clock event  # the tree as it is, then those patches together
#
# "The tree as it is" is the commit checked out plus the uncommitted changes to tracked
# files under src/ and benches/. Run it from a git clone of the repository (the published
# crate has no git history to make a worktree from).
#
# Needs git and valgrind. Prints one line per variant and build:
#   ablation: removed=<patches> variant=<name> instructions=<per call> extra_over_bare=<n> change=<n>
# where `change` is the variant's count less its count in the tree as it is. Only our two
# variants run the patched code: a change in `bare` or the `tower_*` variants is code
# layout, which moves a count by a few dozen instructions between builds (`bare` too, so
# `change` is the steadier figure).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target="$root/target/ablation"
variants=(bare tower_retry tower_retry_no_copy tower_retry_keyed_timeout retry_layer full_stack)
declare -A before
tree=""

command -v valgrind >/dev/null || { echo "ablation: valgrind is not installed" >&2; exit 1; }
git -C "$root" rev-parse --git-dir >/dev/null 2>&1 ||
    { echo "ablation: $root is not a git clone" >&2; exit 1; }
for p in "$@"; do
    [ -f "$here/$p.patch" ] || { echo "ablation: no patch $here/$p.patch" >&2; exit 1; }
done

cleanup() {
    if [ -n "$tree" ]; then git -C "$root" worktree remove --force "$tree" 2>/dev/null || true; fi
}
trap cleanup EXIT

per_call() { # binary variant -> instructions per call
    local bin=$1 v=$2 n count counts=()
    for n in 10000 20000; do
        count=$(OVERHEAD_PROFILE=$v OVERHEAD_PROFILE_CALLS=$n \
            valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --bench 2>&1 |
            sed -n 's/.*Collected : *\([0-9]*\).*/\1/p')
        [[ $count =~ ^[0-9]+$ ]] || { echo "ablation: callgrind gave no count for $v" >&2; exit 1; }
        counts+=("$count")
    done
    echo $(((counts[1] - counts[0]) / 10000))
}

measure() { # label patch...
    local label=$1 bin bare v count log
    shift
    tree=$(mktemp -d)
    git -C "$root" worktree add --quiet --detach "$tree" HEAD
    git -C "$root" diff HEAD -- src benches | git -C "$tree" apply --allow-empty
    for p in "$@"; do git -C "$tree" apply "$here/$p.patch"; done
    log="$target/build-$label.log"
    mkdir -p "$target"
    (cd "$tree" && CARGO_TARGET_DIR="$target" CARGO_PROFILE_BENCH_DEBUG=true \
        cargo bench --bench overhead --no-run >"$log" 2>&1) ||
        { echo "ablation: the build with $label failed; see $log" >&2; exit 1; }
    bin=$(ls -t "$target"/release/deps/overhead-* | grep -v '\.d$' | head -1)
    for v in "${variants[@]}"; do
        count=$(per_call "$bin" "$v")
        if [ "$v" = bare ]; then bare=$count; fi
        if [ "$label" = none ]; then before[$v]=$count; fi
        echo "ablation: removed=$label variant=$v instructions=$count extra_over_bare=$((count - bare)) change=$((count - ${before[$v]}))"
    done
    git -C "$root" worktree remove --force "$tree"
    tree=""
}

if [ $# -gt 0 ]; then
    measure none
    measure "$(IFS=+; echo "$*")" "$@"
    exit
fi
all=()
for p in "$here"/*.patch; do
    all+=("$(basename "$p" .patch)")
done
measure none
for name in "${all[@]}"; do measure "$name" "$name"; done
features=()
for name in "${all[@]}"; do
    if [ "$name" != header-copy ]; then features+=("$name"); fi
done
measure "all-but-header-copy" "${features[@]}"
measure all "${all[@]}"
