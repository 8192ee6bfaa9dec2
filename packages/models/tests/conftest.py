import torch

# The suite must stay fast on a 2-core CI runner; more threads only add contention there.
torch.set_num_threads(2)
