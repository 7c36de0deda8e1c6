"""The leaderboard's cost columns for every built-in variant on this machine's device."""
import json
import os
import sys
import time

import jax

from enlcn_jax.research import cost, variants

sides = [int(s) for s in sys.argv[1].split(',')]
repeats = int(sys.argv[2])
out = sys.argv[3]
rows = {}
for name, variant in variants.VARIANTS.items():
    if name == 'none':
        continue
    model = {'num_random_features': 64}
    model.update({k.split('.', 1)[1]: v for k, v in variant.overrides.items()
                  if k.startswith('model.')})
    start = time.perf_counter()
    rows[name] = cost.attention_cost(model, sizes=sides, channels=64, repeats=repeats,
                                     max_gib=64.0)
    r = rows[name]['rows']
    print(name, [(x['side'], x['fwd ms'] and round(x['fwd ms'], 3), round(x['fwd MiB'], 1))
                 for x in r], f'{time.perf_counter() - start:.1f}s', flush=True)
report = {'device': jax.devices()[0].device_kind, 'jax': jax.__version__, 'sides': sides,
          'repeats': repeats, 'm': 64, 'channels': 64, 'variants': rows}
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, 'leaderboard_cost.json'), 'w') as f:
    json.dump(report, f, indent=1)
print('device', report['device'])
