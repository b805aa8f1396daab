"""Type stubs for wstream (the extension is wstream._native; see src/python.rs)."""

import os
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_Array = Union[npt.NDArray[np.float32], Any]  # anything numpy.asarray takes: buffer protocol, __array__, torch
_Image = Union[str, os.PathLike, Any]  # a path or a PIL.Image.Image

class Error(Exception):
    """Any wstream failure; the message is the CLI's one line."""

class FileError(Error):
    """A weights, config or input file that cannot be read, or a hub id not in the local cache."""

class ModelError(Error):
    """Weights or a config that do not make a model wstream runs, or that computed non-finite values."""

class InputError(Error):
    """An input (array, image) or option that does not fit the model."""

class BudgetError(Error):
    """A weight budget or memory limit below what the model needs."""

class Profile:
    """What each block of a run cost (the records of `wstream profile --format json`)."""

    records: List[Dict[str, Any]]
    def __init__(self, records_json: str, table: str) -> None: ...
    def rows(self) -> List[Dict[str, Any]]:
        """One flat dict per block (nested keys joined by `_`): `pandas.DataFrame(p.rows())`."""
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Dict[str, Any]]: ...

class EnsembleResult:
    """An ensemble's answer for N inputs."""

    names: List[str]
    logits: List[npt.NDArray[np.float32]]
    """Each model's `[N, num_classes]` logits, in model order."""
    probs: npt.NDArray[np.float32]
    """The combined `[N, num_classes]` (mean of the models' softmax by default)."""
    answers: List[Dict[str, Any]]
    """The CLI's JSON answer per input."""
    profile: Optional[Profile]

class Model:
    """A timm model run block by block from its memory-mapped weights (see `create_model`)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> "os.PathLike[str]":
        """Where the weights are (a hub id resolved to its snapshot folder), a pathlib.Path."""
    @property
    def num_classes(self) -> int: ...
    @property
    def synthetic(self) -> bool:
        """Random weights from `wstream synth`: the classes mean nothing."""
    @property
    def pretrained_cfg(self) -> Dict[str, Any]:
        """The `pretrained_cfg` of the model's config.json."""
    @property
    def data_config(self) -> Dict[str, Any]:
        """As `timm.data.resolve_data_config({}, model=m)`: input_size, interpolation, mean, std,
        crop_pct, crop_mode."""
    @overload
    def __call__(self, x: _Array, *, profile: Literal[False] = ...) -> npt.NDArray[np.float32]: ...
    @overload
    def __call__(
        self, x: _Array, *, profile: Literal[True]
    ) -> Tuple[npt.NDArray[np.float32], Profile]: ...
    def __call__(self, x: _Array, *, profile: bool = False) -> Any:
        """Logits `[N, num_classes]` for float32 `x` `[N, 3, H, W]` at `data_config["input_size"]`.
        C-contiguous float32 is read in place, a non-contiguous array is copied, another dtype raises
        InputError. The GIL is released while it runs; Ctrl-C raises KeyboardInterrupt within a block."""
    @overload
    def forward_features(
        self, x: _Array, *, profile: Literal[False] = ...
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def forward_features(
        self, x: _Array, *, profile: Literal[True]
    ) -> Tuple[npt.NDArray[np.float32], Profile]: ...
    def forward_features(self, x: _Array, *, profile: bool = False) -> Any:
        """Pooled pre-logits features `[N, num_features]`, as timm's
        `forward_head(forward_features(x), pre_logits=True)` (timm's forward_features is not pooled)."""
    def forward_head(self, f: npt.NDArray[np.float32], *, pre_logits: bool = False) -> npt.NDArray[np.float32]:
        """`forward_head(f, pre_logits=True)` of forward_features' already pooled output: `f`.
        `pre_logits=False` raises InputError (call the model on the images for logits)."""
    def transform(self, img: _Image) -> npt.NDArray[np.float32]:
        """timm's eval preprocessing (PIL-exact) of a path or PIL image: float32 `[3, H, W]`."""

def create_model(
    id_or_path: Union[str, os.PathLike],
    *,
    threads: Optional[int] = None,
    budget: Optional[int] = None,
    evict: Literal["rss", "cache"] = "rss",
    memory: Optional[int] = None,
    use_test_size: bool = False,
) -> Model:
    """Load a model folder, .safetensors file or hub id (`timm/NAME`, from the local Hugging Face cache).
    `threads`: compute threads (all cores); `budget`: most weight bytes mapped at once; `evict`:
    what happens to a block's pages after it ran; `memory`: most bytes of peak RSS (batches split to fit);
    `use_test_size`: preprocess at test_input_size as timm's validate.py (default: train size)."""

class Ensemble:
    """Several models run layer-major over a batch; peak memory is one model's."""

    def __init__(
        self,
        models: Sequence[Model],
        *,
        threads: Optional[int] = None,
        budget: Optional[int] = None,
        evict: Optional[Literal["rss", "cache"]] = None,
        memory: Optional[int] = None,
        combine: Literal["mean-prob", "mean-logit"] = "mean-prob",
    ) -> None: ...
    @property
    def names(self) -> List[str]: ...
    @property
    def data_configs(self) -> List[Dict[str, Any]]: ...
    def __call__(
        self, inputs: Union[_Array, List[_Image]], *, profile: bool = False
    ) -> EnsembleResult:
        """Run a float32 `[N, 3, H, W]` array (every model must take that size) or a list of images
        (paths or PIL images, preprocessed per model)."""

def peak_rss() -> int:
    """This process's peak RSS so far (VmHWM), in bytes."""
