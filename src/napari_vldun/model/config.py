"""Model configuration: one dataclass and the named configurations (``paper``, ``tiny``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from ..degradation.masks import MASK_KINDS

#: The paper's eight modality classes (Sec. 4.1, CLIP fine-tuning sets).
PAPER_MODALITIES: tuple[str, ...] = (
    "cardiac_mri",  # ACDC
    "brain_mri",  # BraTS
    "cardiac_mr_whs",  # MMWHS-MR
    "lung_ct",  # COVID19-CT
    "abdomen_ct",  # FLARE22
    "liver_ct",  # HCC-TACE-Seg
    "cardiac_ct_whs",  # MMWHS-CT
    "fundus",  # PAPILA
)

#: Degradation classes scored against fixed text prompts (Sec. 3.3.3, App. D).
DEGRADATIONS: tuple[str, ...] = (
    "noise",
    "blur",
    "motion",
    "low_resolution",
    "undersampling",
    "clean",
)


#: Label sets named after their folders in ``shared/data`` (index 0 is background).
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "acdc": ("background", "RV cavity", "LV myocardium", "LV cavity"),
    "brats2015": ("background", "necrosis", "edema", "non-enhancing tumour", "enhancing tumour"),
    "covid_ct": ("background", "infection"),
}

LABEL_COLORS: dict[str, tuple[str, ...]] = {
    "acdc": ("#000000", "#e6194b", "#3cb44b", "#4363d8"),
    "brats2015": ("#000000", "#911eb4", "#ffe119", "#f58231", "#e6194b"),
    "covid_ct": ("#000000", "#f032e6"),
}


class SegHeadKind(str, Enum):
    """A segmentation head's kind (``seg_head_kinds``; :mod:`~napari_vldun.model.heads`)."""

    #: the paper's light CNN on the last stage (:class:`~napari_vldun.model.heads.SegmentationHead`)
    LIGHT = "light"
    #: the last two decoder levels + the image (:class:`~napari_vldun.model.heads.MultiScaleSegmentationHead`)
    MULTISCALE = "multiscale"
    #: a light top-down decoder over three U levels (``seg_decoder_width``; ``SegmentationDecoder``)
    DECODER = "decoder"
    #: a U-Net on the restored image with the U's features added (``seg_unet_widths``; ``SegmentationUNet``)
    UNET = "unet"
    #: a U-Net on the restored image alone (``seg_unet_widths``): restore-then-segment, trainable on cached
    #: restored images (:mod:`napari_vldun.train.restored`)
    IMAGE_UNET = "image_unet"


#: kinds whose heads take the U's feature pyramid and the image (they can share a model)
PYRAMID_HEAD_KINDS = (SegHeadKind.DECODER, SegHeadKind.UNET, SegHeadKind.IMAGE_UNET)


@dataclass
class ClipConfig:
    """An open_clip architecture built from a config dict (never a pretrained tag, never a download).

    ``embed_dim`` is the joint image/text embedding size; ``vision``/``text`` follow open_clip's
    ``CLIPVisionCfg``/``CLIPTextCfg`` field names.
    """

    embed_dim: int = 512
    image_size: int = 224
    vision: dict = field(
        default_factory=lambda: {"layers": 12, "width": 768, "patch_size": 16, "head_width": 64}
    )
    text: dict = field(
        default_factory=lambda: {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
    )
    #: How the visual tower sees a (B, 1, H, W) image: ``"resize"`` (the whole image resized to
    #: ``image_size``, CLIP's own view) or ``"tiles"`` (up to ``max_tiles`` x ``max_tiles`` evenly
    #: spaced ``image_size`` crops at native pixel scale, embeddings averaged, so noise, blur and
    #: aliasing keep their pixel-level signature whatever the image size).
    view: str = "resize"
    max_tiles: int = 4
    #: Normalisation of a ResNet tower (``vision["layers"]`` a list): "batch" (open_clip's) or
    #: "group" (GroupNorm, same in training and inference; needed with the tiles view).
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.view not in ("resize", "tiles"):
            raise ValueError(f"clip view must be 'resize' or 'tiles', got {self.view!r}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"clip norm must be 'batch' or 'group', got {self.norm!r}")
        if int(self.max_tiles) < 1:
            raise ValueError(f"clip max_tiles must be >= 1, got {self.max_tiles}")


@dataclass
class VLDUNConfig:
    """Hyper-parameters of VL-DUN.

    The unfolding network is a U of ``len(widths)`` levels; every encoder level, the bottleneck and
    every decoder level is one PGD stage (AMGDM + MDPMM blocks), and a final refinement stage at full
    resolution follows: ``K = 2 * len(widths)`` stages in all.
    """

    name: str = "custom"
    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256)
    #: MDPMM blocks per stage, one entry per level (encoder and decoder share the count).
    blocks: tuple[int, ...] = (1, 1, 2, 2)
    refine_blocks: int = 1
    #: Bi-Mamba expansion per level (d_inner = expand * width).
    expand: tuple[float, ...] = (1.0, 2.0, 2.0, 2.0)
    d_state: int = 16
    headdim: int = 16
    gdfn_expansion: float = 2.0
    attn_heads: int = 4
    #: Width of the prior tokens fed to every AMGDM cross-attention (2 + len(degradations) tokens).
    prior_dim: int = 128
    #: Width of the light CNN segmentation head.
    seg_width: int = 32
    modalities: tuple[str, ...] = PAPER_MODALITIES
    degradations: tuple[str, ...] = DEGRADATIONS
    #: label-set name -> class names (index 0 is background); one seg head per label set.
    label_sets: dict = field(default_factory=lambda: {k: list(v) for k, v in LABEL_SETS.items()})
    #: label-set name -> one "#rrggbb" colour per class (index 0, background, is drawn transparent).
    label_colors: dict = field(default_factory=lambda: {k: list(v) for k, v in LABEL_COLORS.items()})
    #: modality name -> label set used when the caller does not pick one.
    modality_label_sets: dict = field(
        default_factory=lambda: {"cardiac_mri": "acdc", "brain_mri": "brats2015", "lung_ct": "covid_ct"}
    )
    clip: ClipConfig = field(default_factory=ClipConfig)
    #: with known k-space: passes of the unfolding network, each followed by data consistency and fed
    #: the previous pass's consistent image (weights shared). 1 = a single pass.
    cascades: int = 1
    #: mask kind (:func:`~napari_vldun.degradation.mask_kind`: "cartesian" or "radial") -> passes, used instead
    #: of ``cascades`` when the caller gives no count and every mask of the batch is of that kind (inference
    #: only: training from a checkpoint clears it, as the best count changes with the weights).
    cascades_by_mask: dict = field(default_factory=dict)
    #: input pixels per level-0 feature pixel along each axis (PixelUnshuffle before the U, PixelShuffle
    #: after it): 2 runs the whole U at half resolution, ~4x cheaper (a deviation, docs/architecture.md).
    patch: int = 1
    #: every stage (and pass) adds a residual to a running image estimate, data-consistent after each stage
    #: when k-space is known (x_k = DC(x_{k-1} + delta_k)); the estimates are supervised and shown as the
    #: stage maps. False: the first release's stage maps (a projection of each stage's features).
    stage_images: bool = False
    #: AMGDM's Phi^T is scale-equivariant in the residual r: Phi^T(r) = s f(r / s), s = RMS(r) per sample,
    #: so Phi^T(0) = 0 and Phi^T(a r) = a Phi^T(r) (a real gradient step). False: the first release's
    #: LayerNorm -> Bi-Mamba, whose output ignores the residual's scale.
    scaled_phi_t: bool = False
    #: segmentation head on multi-scale decoder features (last two levels, upsampled) + the restored image
    #: (a deviation from the paper's "light CNN on the last stage", docs/architecture.md).
    seg_multiscale: bool = False
    #: > 0: the segmentation head is a light top-down decoder of this width over the last three U levels
    #: and the restored image (:class:`~napari_vldun.model.heads.SegmentationDecoder`; ``stage_images``
    #: configs only; overrides ``seg_multiscale``): a deviation for capacity, docs/architecture.md.
    seg_decoder_width: int = 0
    #: non-empty: the segmentation head is a small U-Net of these widths on the restored image, with the U's
    #: features added at their scales (:class:`~napari_vldun.model.heads.SegmentationUNet`; ``stage_images``
    #: configs only; overrides ``seg_decoder_width``): a deviation for capacity, docs/architecture.md.
    seg_unet_widths: tuple[int, ...] = ()
    #: non-empty: groups of label-set names (together: every label set once), each with its own segmentation
    #: head of the kind above (:class:`~napari_vldun.model.heads.GroupedSegmentationHeads`), e.g.
    #: ``[["acdc", "covid_ct"], ["brats2015"]]``. Empty: one head shared by all label sets.
    seg_head_groups: tuple[tuple[str, ...], ...] = ()
    #: non-empty: one :class:`SegHeadKind` value per group of ``seg_head_groups`` (all of the pyramid kinds:
    #: "decoder", "unet", "image_unet"), e.g. ``["image_unet", "decoder", "decoder"]``. Empty: every group's
    #: kind follows the fields above (:meth:`seg_head_kind`).
    seg_head_kinds: tuple[str, ...] = ()
    #: ``stage_images`` only: every stage's features receive the current (data-consistent) estimate x_{k-1},
    #: embedded at the stage's level by a zero-initialised conv, so what data consistency restored reaches the
    #: next stage (the proximal step acts on the estimate, as in the paper's PGD). False: the stages see only
    #: the observation y and the estimate is a read-out (run 10, 2026-12-01).
    stage_feedback: bool = False
    #: ``stage_images`` only: a learned step size per (pass, stage) on each stage's residual image, for the
    #: first ``pass_step_sizes`` weight-shared passes (later passes use the last pass's), initialised to 1 so a
    #: checkpoint without them computes the same; the shared stage heads cannot tell the passes apart, and
    #: a stage that must correct much in pass 1 overshoots in pass 3 (run 28, BENCHMARKS.md). 0: none.
    pass_step_sizes: int = 0
    #: ``pass_step_sizes`` only: one more factor per (mask kind, pass, stage) on those step sizes, picked per
    #: sample from its k-space mask (:func:`~napari_vldun.degradation.masks.mask_kinds`: Cartesian lines or
    #: radial spokes; no mask: none), initialised to 1 so a checkpoint without them computes the same. The
    #: radial CT slices fall where pass 3 begins while the Cartesian MR slices gain there (run 29,
    #: BENCHMARKS.md); one shared table cannot serve both.
    mask_step_sizes: bool = False
    # Ablation switches (paper Table 3).
    use_priors: bool = True
    freq_decoupling: bool = True
    seg_head: bool = True
    rec_head: bool = True

    @property
    def num_stages(self) -> int:
        return 2 * len(self.widths)

    def seg_head_kind(self, group: int = 0) -> SegHeadKind:
        """The kind of group ``group``'s segmentation head: ``seg_head_kinds[group]`` when set, else from
        ``seg_unet_widths`` / ``seg_decoder_width`` / ``seg_multiscale`` (in that order of precedence)."""
        if self.seg_head_kinds:
            return SegHeadKind(self.seg_head_kinds[group])
        if self.seg_unet_widths:
            return SegHeadKind.UNET
        if self.seg_decoder_width:
            return SegHeadKind.DECODER
        return SegHeadKind.MULTISCALE if self.seg_multiscale else SegHeadKind.LIGHT

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLDUNConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VL-DUN config keys: {sorted(unknown)}")
        clip = ClipConfig(**d.pop("clip", {}))
        for key in ("widths", "blocks", "expand", "modalities", "degradations", "seg_unet_widths", "seg_head_kinds"):
            if key in d:
                d[key] = tuple(d[key])
        if "seg_head_groups" in d:
            d["seg_head_groups"] = tuple(tuple(g) for g in d["seg_head_groups"])
        return cls(clip=clip, **d)

    def __post_init__(self) -> None:
        if int(self.cascades) < 1:
            raise ValueError(f"config: cascades must be >= 1, got {self.cascades}")
        if int(self.patch) not in (1, 2, 4):
            raise ValueError(f"config: patch must be 1, 2 or 4, got {self.patch}")
        if int(self.pass_step_sizes) < 0 or (self.pass_step_sizes and not self.stage_images):
            raise ValueError(f"config: pass_step_sizes must be >= 0 and needs stage_images, got "
                             f"{self.pass_step_sizes} (stage_images {self.stage_images})")
        if self.mask_step_sizes and not self.pass_step_sizes:
            raise ValueError("config: mask_step_sizes needs pass_step_sizes >= 1")
        if int(self.seg_decoder_width) < 0 or (self.seg_decoder_width and not self.stage_images):
            raise ValueError(f"config: seg_decoder_width must be >= 0 and needs stage_images, got "
                             f"{self.seg_decoder_width} (stage_images {self.stage_images})")
        if self.seg_unet_widths and (not self.stage_images or len(self.seg_unet_widths) < 2
                                     or min(self.seg_unet_widths) < 1):
            raise ValueError(f"config: seg_unet_widths needs stage_images and at least two positive widths, got "
                             f"{tuple(self.seg_unet_widths)} (stage_images {self.stage_images})")
        for kind, n in dict(self.cascades_by_mask).items():
            if kind not in MASK_KINDS:
                raise ValueError(f"config: cascades_by_mask key {kind!r} is not a mask kind {MASK_KINDS}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"config: cascades_by_mask[{kind!r}] must be an integer >= 1, got {n!r}")
        groups = label_set_groups(self)  # refuses groups that do not cover the label sets exactly once
        if self.seg_head_kinds:
            kinds = list(self.seg_head_kinds)
            bad = [k for k in kinds if k not in {m.value for m in SegHeadKind}]
            if bad:
                raise ValueError(f"config: seg_head_kinds {bad} unknown; choose from {[m.value for m in SegHeadKind]}")
            if not self.seg_head_groups or len(kinds) != len(groups):
                raise ValueError(f"config: seg_head_kinds needs one kind per seg_head_groups group, got {kinds} for "
                                 f"{groups}")
            if any(SegHeadKind(k) not in PYRAMID_HEAD_KINDS for k in kinds) or not self.stage_images:
                raise ValueError(f"config: seg_head_kinds must be of {[k.value for k in PYRAMID_HEAD_KINDS]} and need "
                                 f"stage_images, got {kinds}")
            needs = {SegHeadKind.UNET: "seg_unet_widths", SegHeadKind.IMAGE_UNET: "seg_unet_widths",
                     SegHeadKind.DECODER: "seg_decoder_width"}
            for k in kinds:
                if not getattr(self, needs[SegHeadKind(k)]):
                    raise ValueError(f"config: a {k!r} segmentation head needs {needs[SegHeadKind(k)]}")

    def replace(self, **changes) -> "VLDUNConfig":
        return dataclasses.replace(self, **changes)


def label_set_groups(cfg: "VLDUNConfig") -> list[list[str]]:
    """``cfg.seg_head_groups`` checked (each label set in exactly one group, no unknown name), as lists; one
    group of every label set when none are set. Raises ValueError."""
    names = list(cfg.label_sets)
    if not cfg.seg_head_groups:
        return [names]
    groups = [list(g) for g in cfg.seg_head_groups]
    flat = [n for g in groups for n in g]
    if any(not g for g in groups) or sorted(flat) != sorted(names) or len(set(flat)) != len(flat):
        raise ValueError(f"config: seg_head_groups {groups} must hold each label set {names} exactly once")
    return groups


def _paper() -> VLDUNConfig:
    return VLDUNConfig(
        name="paper",
        widths=(64, 128, 256, 512),
        blocks=(3, 1, 1, 2),
        refine_blocks=3,
        expand=(2.0, 2.0, 2.0, 2.0),
        prior_dim=256,
        stage_images=True,
        scaled_phi_t=True,
        stage_feedback=True,
        clip=ClipConfig(),  # ViT-B/16 visual tower, CLIP text tower (frozen)
    )


def _tiny() -> VLDUNConfig:
    return VLDUNConfig(
        name="tiny",
        patch=2,
        stage_images=True,
        scaled_phi_t=True,
        seg_multiscale=True,
        stage_feedback=True,
        widths=(16, 32, 64),
        blocks=(1, 1, 1),
        refine_blocks=1,
        expand=(1.0, 1.0, 2.0),
        attn_heads=2,
        prior_dim=64,
        seg_width=16,
        clip=ClipConfig(
            embed_dim=64,
            image_size=64,
            # A small CLIP ResNet tower (GroupNorm) on native-scale 64 px tiles: the tiny ViT on the
            # resized image never learned the degradation prior (BENCHMARKS.md, "Degradation prior").
            vision={"layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
            text={"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
            view="tiles",
            norm="group",
        ),
    )


def _tiny_v1() -> VLDUNConfig:
    """The first release's ``tiny`` (full-resolution U, feature-projection stage maps, LayerNorm Phi^T):
    the architecture of checkpoints trained before 2026-12-01, kept for comparisons (benchmarks)."""
    return _tiny().replace(name="tiny_v1", patch=1, stage_images=False, scaled_phi_t=False, seg_multiscale=False,
                          stage_feedback=False)


CONFIGS = {"paper": _paper, "tiny": _tiny, "tiny_v1": _tiny_v1}


def get_config(name: str, **overrides) -> VLDUNConfig:
    """Return a fresh copy of a named configuration, with optional field overrides.

    A ``clip`` override may be a dict of :class:`ClipConfig` fields, merged into the named config's.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]()
    if isinstance(overrides.get("clip"), dict):
        overrides = dict(overrides)
        overrides["clip"] = ClipConfig(**{**dataclasses.asdict(cfg.clip), **overrides["clip"]})
    return cfg.replace(**overrides) if overrides else cfg
