#!/usr/bin/env bash
# Mutation testing with mutmut 3, one module at a time (docs/mutants.md, "Mutation testing with
# mutmut").
#
#   tools/mutation.sh [--tests "TEST_FILE..."] [--only "PATTERN..."] [--resume] MODULE.py...
#
# For each MODULE (a path such as enlcn_jax/data/transforms.py) it copies the working tree to
# mutants/<dotted.module>/, sets mutmut's `only_mutate` to MODULE and its test selection to the
# module's own test files (tests/**/test_NAME.py and test_NAME_*.py; with none, or with
# `--tests importers`, every test file that imports MODULE; or the files given to --tests), and
# runs `mutmut run` there with one child at a time (MUTATION_CHILDREN to change). mutmut then
# runs, per mutated function, only the selected tests that called it in its stats run. The base
# settings are `[tool.mutmut]` in pyproject.toml.
#
# Writes mutants/<dotted.module>/survivors.txt (the diff of every mutant not killed) and one line
# per module to mutants/kill_rates.tsv: module, mutants, killed, survived, timeout, suspicious,
# no tests, kill rate ((killed + timeout) / mutants checked), seconds, test files. --resume keeps an
# interrupted run's results and tests only the mutants not yet checked. --only checks only the
# mutants whose names match one of the fnmatch PATTERNs: '*__mutmut_*0 *__mutmut_*5' is a sample
# of one mutant in five (the line then counts the mutants checked and says how many were not).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CHILDREN=${MUTATION_CHILDREN:-1}
TESTS=""
ONLY=()
RESUME=0
MODULES=()
while (($#)); do
  case $1 in
    --tests) TESTS=$2; shift 2 ;;
    --only) read -r -a ONLY <<< "$2"; shift 2 ;;
    --resume) RESUME=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) MODULES+=("$1"); shift ;;
  esac
done
((${#MODULES[@]})) || { echo "usage: tools/mutation.sh [--tests \"FILES\"] [--only \"PATTERNS\"] [--resume] MODULE.py..." >&2; exit 2; }
command -v mutmut >/dev/null || { echo "mutmut not found: pip install -e '.[test]'" >&2; exit 2; }

cd "$REPO"
mkdir -p mutants
# The copies live under mutants/, so the tests find ../shared (tests/conftest.py) by this.
export ENLCN_SHARED=${ENLCN_SHARED:-$(cd "$REPO/.." && pwd)/shared}
for module in "${MODULES[@]}"; do
  [[ -f $module && $module == enlcn_jax/*.py ]] || { echo "not a module under enlcn_jax/: $module" >&2; exit 2; }
  dotted=${module%.py}; dotted=${dotted//\//.}
  selection=$TESTS
  name=${dotted##*.}
  if [[ -z $selection ]]; then
    # The module's own tests (tests/**/test_NAME.py, test_NAME_*.py) ...
    selection=$(find tests -name "test_${name}.py" -o -name "test_${name}_*.py" | sort | tr '\n' ' ')
  fi
  if [[ -z $selection || $selection == importers ]]; then
    # ... else every test file that imports it, by its dotted name or as `from PACKAGE import NAME`.
    package=${dotted%.*}
    selection=$(grep -rlE --include='test_*.py' \
      "${dotted//./\\.}\b|from ${package//./\\.} import ([^#]*[ ,(])?${name}\b" tests | sort | tr '\n' ' ')
  fi
  [[ -n $selection ]] || { echo "$module: no test file imports it; give --tests" >&2; exit 2; }

  work=mutants/$dotted
  if ((RESUME == 0)); then rm -rf "$work"; fi
  mkdir -p "$work"
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
  python - "$work/pyproject.toml" "$module" $selection <<'EOF'
import sys, json, tomllib
path, module, tests = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = open(path).read().splitlines()
keys = ('only_mutate', 'pytest_add_cli_args_test_selection')
lines = [l for l in lines if not l.split('=')[0].strip() in keys]
at = lines.index('[tool.mutmut]') + 1
lines[at:at] = [f'only_mutate = {json.dumps([module])}',
                f'pytest_add_cli_args_test_selection = {json.dumps(tests)}']
open(path, 'w').write('\n'.join(lines) + '\n')
tomllib.load(open(path, 'rb'))
EOF
  echo "== $module: tests $selection"
  start=$(date +%s)
  status=0
  (cd "$work" && mutmut run --max-children "$CHILDREN" ${ONLY[@]+"${ONLY[@]}"} 2>&1 | tr '\r' '\n' |
     grep -v '^⠀*[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]' > mutmut.log; exit "${PIPESTATUS[0]}") || status=$?
  seconds=$(($(date +%s) - start))
  tail -n 3 "$work/mutmut.log"
  if ((status)); then
    echo "$module: mutmut failed (exit $status); see it with: cd $work && mutmut run" >&2
    continue
  fi
  (cd "$work" && python - "$module" "$seconds" "$selection" <<'EOF'
import collections, json, subprocess, sys
from mutmut.stats import status_by_exit_code
module, seconds, tests = sys.argv[1:4]
codes = json.load(open(f'mutants/{module}.meta'))['exit_code_by_key']
status = {name: status_by_exit_code[code] for name, code in codes.items()}
count = collections.Counter(status.values())
unchecked = count['not checked']
total = len(status) - unchecked
caught = count['killed'] + count['timeout']
row = [module, total, count['killed'], count['survived'], count['timeout'], count['suspicious'],
       count['no tests'], f'{100 * caught / max(total, 1):.0f} %', seconds, tests.strip()]
with open('survivors.txt', 'w') as out:
    for name in sorted(n for n, s in status.items() if s not in ('killed', 'timeout', 'not checked')):
        diff = subprocess.run(['mutmut', 'show', name], capture_output=True, text=True).stdout
        out.write(diff + '\n')
if unchecked:
    row.append(f'({unchecked} not checked)')
print('\t'.join(map(str, row)))
with open('../kill_rates.tsv', 'a') as out:
    out.write('\t'.join(map(str, row)) + '\n')
EOF
  )
done
