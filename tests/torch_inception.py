"""pytorch-fid's InceptionV3 forward written with torch.nn.functional over its state dict:
the reference the Flax port is tested against and benchmarked beside (torch only)."""


def functional_inception(torch, sd):
  """pytorch-fid's forward (eval mode) with torch.nn.functional over its state dict."""
  F = torch.nn.functional
  t = {k: torch.from_numpy(v) for k, v in sd.items()}

  def basic(x, p, stride=1, padding=0):
    x = F.conv2d(x, t[f"{p}.conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, t[f"{p}.bn.running_mean"], t[f"{p}.bn.running_var"],
                     t[f"{p}.bn.weight"], t[f"{p}.bn.bias"], training=False, eps=1e-3)
    return F.relu(x)

  def avg(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

  def block_a(x, n):
    b1 = basic(x, f"{n}.branch1x1")
    b5 = basic(basic(x, f"{n}.branch5x5_1"), f"{n}.branch5x5_2", padding=2)
    b3 = basic(basic(basic(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1),
               f"{n}.branch3x3dbl_3", padding=1)
    return torch.cat([b1, b5, b3, basic(avg(x), f"{n}.branch_pool")], 1)

  def block_b(x, n):
    b3 = basic(x, f"{n}.branch3x3", stride=2)
    bd = basic(basic(basic(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1),
               f"{n}.branch3x3dbl_3", stride=2)
    return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)

  def block_c(x, n):
    b1 = basic(x, f"{n}.branch1x1")
    b7 = basic(basic(basic(x, f"{n}.branch7x7_1"), f"{n}.branch7x7_2", padding=(0, 3)),
               f"{n}.branch7x7_3", padding=(3, 0))
    bd = basic(x, f"{n}.branch7x7dbl_1")
    for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
      bd = basic(bd, f"{n}.branch7x7dbl_{i}", padding=pad)
    return torch.cat([b1, b7, bd, basic(avg(x), f"{n}.branch_pool")], 1)

  def block_d(x, n):
    b3 = basic(basic(x, f"{n}.branch3x3_1"), f"{n}.branch3x3_2", stride=2)
    b7 = basic(basic(basic(x, f"{n}.branch7x7x3_1"), f"{n}.branch7x7x3_2", padding=(0, 3)),
               f"{n}.branch7x7x3_3", padding=(3, 0))
    b7 = basic(b7, f"{n}.branch7x7x3_4", stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)

  def block_e(x, n, pool):
    b1 = basic(x, f"{n}.branch1x1")
    b3 = basic(x, f"{n}.branch3x3_1")
    b3 = torch.cat([basic(b3, f"{n}.branch3x3_2a", padding=(0, 1)),
                    basic(b3, f"{n}.branch3x3_2b", padding=(1, 0))], 1)
    bd = basic(basic(x, f"{n}.branch3x3dbl_1"), f"{n}.branch3x3dbl_2", padding=1)
    bd = torch.cat([basic(bd, f"{n}.branch3x3dbl_3a", padding=(0, 1)),
                    basic(bd, f"{n}.branch3x3dbl_3b", padding=(1, 0))], 1)
    return torch.cat([b1, b3, bd, basic(pool(x), f"{n}.branch_pool")], 1)

  def forward(x):
    if x.shape[-1] != 299:
      x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = basic(x, "Conv2d_1a_3x3", stride=2)
    x = basic(x, "Conv2d_2a_3x3")
    x = F.max_pool2d(basic(x, "Conv2d_2b_3x3", padding=1), 3, stride=2)
    x = basic(x, "Conv2d_3b_1x1")
    x = F.max_pool2d(basic(x, "Conv2d_4a_3x3"), 3, stride=2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
      x = block_a(x, n)
    x = block_b(x, "Mixed_6a")
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      x = block_c(x, n)
    x = block_d(x, "Mixed_7a")
    x = block_e(x, "Mixed_7b", avg)
    x = block_e(x, "Mixed_7c", lambda y: F.max_pool2d(y, 3, stride=1, padding=1))
    return F.adaptive_avg_pool2d(x, 1)[:, :, 0, 0]
  return forward
