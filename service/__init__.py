"""MaRI Serve: online ranking inference with VanI, UOI and MaRI variants derived from one trained model."""

import warnings

# torch.export's own deserialization trips torch's deprecation of `isinstance(treespec, LeafSpec)` (torch 2.13):
# every `ranker` command and worker printed it, about code that is not ours and that users cannot change.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
