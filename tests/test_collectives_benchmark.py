"""The HLO collective parser of benchmarks/collectives.py: counts and operand bytes.

Two checks: a hand-written HLO module with every form the parser must read (inline and omitted
operand shapes, tuple-shaped combined collectives, async -start/-done pairs, the `/*index=N*/`
comments of long operand lists, three spellings of replica groups), and a real compiled
program, a psum and an all_gather under shard_map on 4 faked CPU devices (in a subprocess: the
device count is fixed when jax is imported). The minimum-bytes formula is checked on numbers.
"""

import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import collectives  # noqa: E402  (benchmarks/collectives.py)

HLO = """\
HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[128,64]{1,0})->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(f32[] %x, f32[] %y)
}

ENTRY %main (p0: f32[128,64], p1: bf16[16,32], p2: s32[4]) -> f32[] {
  %p0 = f32[128,64]{1,0} parameter(0)
  %p1 = bf16[16,32]{1,0} parameter(1)
  %p2 = s32[4]{0} parameter(2)
  %ar = (f32[128,64]{1,0}, bf16[16,32]{1,0}) all-reduce(f32[128,64]{1,0} %p0, bf16[16,32]{1,0} %p1), channel_id=1, replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add
  %ag = f32[512,64]{1,0} all-gather(%p0), channel_id=2, replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}, use_global_device_ids=true
  %ags = (f32[128,64]{1,0}, f32[256,64]{1,0}) all-gather-start(%p0), channel_id=3, replica_groups=[4,2]<=[8], dimensions={0}
  %agd = f32[256,64]{1,0} all-gather-done(%ags)
  %rs = f32[32,64]{1,0} reduce-scatter(%p0), channel_id=4, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
  %a2a = (s32[1]{0}, s32[1]{0}, s32[1]{0}, s32[1]{0}, s32[1]{0}, /*index=5*/s32[1]{0}) all-to-all(%p2, %p2, %p2, %p2, %p2, /*index=5*/%p2), channel_id=5, replica_groups={{0,1,2,3,4,5}}
  %cps = (bf16[16,32]{1,0}, bf16[16,32]{1,0}, u32[], u32[]) collective-permute-start(bf16[16,32]{1,0} %p1), channel_id=6, source_target_pairs={{0,1},{1,0}}
  %cpd = bf16[16,32]{1,0} collective-permute-done(%cps)
  %cp = s32[4]{0} collective-permute(%p2), channel_id=7, source_target_pairs={{0,1}}
  ROOT %r = f32[] constant(0)
}
"""


def test_hand_written_module():
  found = {c["name"]: c for c in collectives.parse_collectives(HLO)}
  assert sorted(found) == ["a2a", "ag", "ags", "ar", "cp", "cps", "rs"]
  assert found["ar"]["operand_bytes"] == 128 * 64 * 4 + 16 * 32 * 2
  assert found["ar"]["group_size"] == 4
  assert found["ag"]["operand_bytes"] == 128 * 64 * 4
  assert found["ag"]["result_bytes"] == 512 * 64 * 4
  assert found["ag"]["group_size"] == 4
  # Async: counted once, at the start; its destination derived from the group size (2).
  assert found["ags"]["kind"] == "all-gather"
  assert found["ags"]["operand_bytes"] == 128 * 64 * 4
  assert found["ags"]["result_bytes"] == 256 * 64 * 4
  assert found["rs"]["operand_bytes"] == 128 * 64 * 4
  assert found["rs"]["result_bytes"] == 32 * 64 * 4
  assert found["rs"]["group_size"] == 4
  assert found["a2a"]["operand_bytes"] == 6 * 4 * 4
  assert found["a2a"]["group_size"] == 6
  assert found["cps"]["kind"] == "collective-permute"
  assert found["cps"]["operand_bytes"] == found["cps"]["result_bytes"] == 16 * 32 * 2
  assert found["cp"]["operand_bytes"] == 16
  summary = collectives.summarize(collectives.parse_collectives(HLO))
  assert summary["counts"] == {"all-reduce": 1, "all-gather": 2, "reduce-scatter": 1,
                               "all-to-all": 1, "collective-permute": 2}
  assert summary["bytes"] == {"all-reduce": 33792, "all-gather": 65536, "reduce-scatter": 32768,
                              "all-to-all": 96, "collective-permute": 1040}
  assert summary["total_bytes"] == sum(summary["bytes"].values())


LOOPS = """\
HloModule jit_loops

%inner (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ar.in = f32[8]{0} all-reduce(%x), channel_id=2, replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %ar.in)
}

%outer (q: (s32[], f32[8])) -> (s32[], f32[8]) {
  %q = (s32[], f32[8]{0}) parameter(0)
  %y = f32[8]{0} get-tuple-element(%q), index=1
  %ag.out = f32[16]{0} all-gather(%y), channel_id=3, replica_groups={{0,1}}, dimensions={0}
  %w.in = (s32[], f32[8]{0}) while(%q), condition=%cond, body=%inner, backend_config={"known_trip_count":{"n":"2"}}
  ROOT %u = (s32[], f32[8]{0}) tuple(%j, %y)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %ar.top = f32[8]{0} all-reduce(%a), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %w.out = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%outer, backend_config={"known_induction_variable":{"tuple_index":"0"},"known_trip_count":{"n":"3"}}
  ROOT %r = f32[8]{0} copy(%a)
}
"""


def test_collectives_in_loops_count_once_per_iteration():
  """A collective in a while body (a scan over layers or microbatches) runs trip-count times
  per step; in a nested loop, the product."""
  found = {c["name"]: c for c in collectives.parse_collectives(LOOPS)}
  assert {n: c["runs"] for n, c in found.items()} == {"ar.top": 1, "ag.out": 3, "ar.in": 6}
  summary = collectives.summarize(list(found.values()))
  assert summary["counts"]["all-reduce"] == 7 and summary["counts"]["all-gather"] == 3
  assert summary["bytes"]["all-reduce"] == 7 * 32 and summary["bytes"]["all-gather"] == 3 * 32


def test_shape_bytes():
  assert collectives.shape_bytes("f32[8,128]{1,0}") == 4096
  assert collectives.shape_bytes("(bf16[4]{0}, s32[], pred[3])") == 8 + 4 + 3
  assert collectives.shape_bytes("f32[<=16]{0}") == 64
  assert collectives.shape_bytes("u32[]") == 4


def test_minimum_bytes():
  # dp: one all-reduce of every gradient.
  assert collectives.minimum_bytes(1000, 0, 8, 1)["total"] == 1000
  # fsdp on 8: reduce-scatter S, replicated R, one gather per weight set of S / 8.
  m = collectives.minimum_bytes(1000, 800, 1, 8, weight_sets=2)
  assert m["total"] == 800 + 200 + 2 * 100
  # hybrid (2 x 4): plus the all-reduce of the shards over `data`.
  m = collectives.minimum_bytes(1000, 800, 2, 4, weight_sets=1)
  assert m["total"] == 800 + 200 + 200 + 200


_PROGRAM = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import collectives
assert jax.device_count() == 4, jax.device_count()
mesh = jax.make_mesh((4,), ("x",))
def f(a, b, c):
  looped, _ = jax.lax.scan(lambda s, x: (s + jax.lax.psum(jnp.tanh(x), "x"), None),
                           jnp.zeros((2,)), c)
  return jax.lax.psum(a, "x"), jax.lax.all_gather(b, "x", tiled=True), looped
g = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("x"), P("x"), P(None, "x")),
                            out_specs=(P(), P(), P()), check_vma=False))
split = jax.sharding.NamedSharding(mesh, P("x"))
text = g.lower(jax.ShapeDtypeStruct((64,), jnp.float32, sharding=split),
               jax.ShapeDtypeStruct((32, 3), jnp.float32, sharding=split),
               jax.ShapeDtypeStruct((5, 8), jnp.float32, sharding=jax.sharding.NamedSharding(
                   mesh, P(None, "x")))).compile().as_text()
print(json.dumps([{k: c[k] for k in ("kind", "operand_bytes", "result_bytes", "group_size",
                                     "runs")}
                  for c in collectives.parse_collectives(text)]))
"""


def test_compiled_shard_map_program():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", _PROGRAM, BENCHMARKS], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  found = json.loads(out.stdout.strip().splitlines()[-1])
  looped = [c for c in found if c["runs"] > 1]
  assert [(c["kind"], c["runs"], c["operand_bytes"]) for c in looped] == [("all-reduce", 5, 8)]
  found = [c for c in found if c["runs"] == 1]
  assert sorted(c["kind"] for c in found) == ["all-gather", "all-reduce"], found
  by_kind = {c["kind"]: c for c in found}
  # psum of the local f32[16]; all_gather of the local f32[8, 3] into f32[32, 3]. (float32: the
  # CPU backend runs a bfloat16 collective in float32, between two converts.)
  assert by_kind["all-reduce"]["operand_bytes"] == 16 * 4
  assert by_kind["all-reduce"]["group_size"] == 4
  assert by_kind["all-gather"]["operand_bytes"] == 8 * 3 * 4
  assert by_kind["all-gather"]["result_bytes"] == 32 * 3 * 4
  assert by_kind["all-gather"]["group_size"] == 4


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-v"]))
