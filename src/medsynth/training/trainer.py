"""The training loop: a generator of events, shared by the CLI, the napari widget and cluster jobs.

``for event in train(config, data, control): ...`` runs a recipe step by step and yields the events
of `medsynth.training.events`; the loop knows nothing about who watches it. Each step is seeded from
(seed, rank, step), and the batch of a step depends only on the step number, so a run on CPU is
reproducible and a resumed run continues exactly as an uninterrupted one would.

Recipes of data kind ``"lesion"`` (SinGAN) train on one ``(image, mask)`` pair: the dataset is the
lesion crop (`medsynth.data.datasets.LesionCropDataset`), normalised by its own minimum and maximum
whatever ``config.normalization`` says, never augmented (``augment=True`` is refused). Recipes with
``steps_from_data`` set the run's length themselves and ``config.steps`` is ignored. Recipes of data
kind ``"two-domain"`` train on `medsynth.data.domains.TwoDomains`, each domain in its own intensity
map (both saved in checkpoints).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.data.datasets import (
    ClipDataset,
    LesionCropDataset,
    PatchDataset,
    SliceDataset,
    StepSampler,
    as_medimage,
)
from medsynth.data.domain_dataset import DomainPairDataset
from medsynth.data.domains import as_two_domains
from medsynth.data.normalization import Normalization
from medsynth.data.paired import PairedSliceDataset, split_pairs
from medsynth.errors import CheckpointError, InputError, SettingsError, TrainingError
from medsynth.io.image import MedImage
from medsynth.io.output import check_folder
from medsynth.settings import parse, to_dict
from medsynth.training import distributed
from medsynth.training.checkpoint import (
    Checkpoint,
    checkpoint_path,
    checkpoint_settings,
    load_checkpoint,
    save_checkpoint,
)
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.device import autocast, select_device
from medsynth.training.events import CheckpointSaved, Event, Finished, Paused, Progress, Resumed, Samples, Started
from medsynth.training.recipe import TARGET_DATA_KINDS, Recipe, TranslationRecipe, get_recipe
from medsynth.training.runs import check_run_folder, start_run

SMALL_DATA = 5000
"""Datasets with fewer items than this are augmented unless the config says otherwise."""


def check_config(config: TrainConfig) -> tuple[type[Recipe], Any, Checkpoint | None]:
    """Validate `config` before any training: the recipe class, its parsed settings and the resume checkpoint.

    Raises SettingsError naming every bad key, CheckpointError for an unusable resume file, or InputError
    for a run folder that cannot be written or holds another run (`medsynth.training.runs`). On resume,
    the checkpoint's settings are the defaults that `config.settings` overrides.
    """
    config.validate()
    if distributed.context_from_env().is_main:  # only rank 0 writes; the others would see its medsynth-run.json
        check_folder(config.out_dir, "run folder")
        check_run_folder(config.out_dir, config.resume)
    recipe_cls = get_recipe(config.recipe)
    resume = load_checkpoint(config.resume) if config.resume is not None else None
    if resume is not None and resume.recipe != config.recipe:
        raise CheckpointError(
            f"checkpoint {config.resume} was trained with recipe {resume.recipe!r}, not {config.recipe!r}; "
            f"resume it with --recipe {resume.recipe}"
        )
    if recipe_cls.data_kind == "lesion" and config.augment:
        raise SettingsError(
            f"recipe {config.recipe!r} trains on one lesion crop as it is and cannot augment it; drop augment=True"
        )
    if resume is not None and not recipe_cls.steps_from_data and resume.step >= config.steps:
        raise SettingsError(
            f"checkpoint {config.resume} is already at step {resume.step}; ask for more steps than that to resume"
        )
    if resume is not None:
        settings = checkpoint_settings(resume, config.settings)
    else:
        settings = parse(recipe_cls.settings_cls, config.settings)
    recipe_cls.check_settings(settings)
    changed = config.changed_normalization()
    if changed and recipe_cls.data_normalization(settings) is not None:
        raise SettingsError(
            f"recipe {config.recipe!r} trains in the intensity map of the model it is bound to, so the normalisation "
            f"options would be ignored: drop {', '.join(changed)}"
        )
    return recipe_cls, settings, resume


def train(config: TrainConfig, data: Sequence[MedImage | Any], control: TrainControl | None = None) -> Iterator[Event]:
    """Train `config.recipe` on `data` (MedImages or arrays), yielding events; see the module docstring.

    Recipes whose ``data_kind`` is in `TARGET_DATA_KINDS` (``"paired"``, ``"lesion"``) take
    ``(image, target)`` pairs instead, the target (MedImage or array) on the image's grid; ``"lesion"``
    takes exactly one pair, a lesion and its mask.

    Stop and pause requests of `control` are honoured before the next step; stopping writes a
    checkpoint. `Finished` is always the last event of a run that did not raise.
    """
    control = control or TrainControl()
    recipe_cls, settings, resume = check_config(config)
    context = distributed.context_from_env()
    device = select_device(config.device, context.local_rank)
    created = distributed.init(context, device)
    try:
        yield from _run(config, data, control, recipe_cls, settings, resume, context, device)
    finally:
        if created:
            distributed.shutdown()


def _run(
    config: TrainConfig,
    data: Sequence[MedImage | Any],
    control: TrainControl,
    recipe_cls: type[Recipe],
    settings: Any,
    resume: Checkpoint | None,
    context: distributed.DistributedContext,
    device: torch.device,
) -> Iterator[Event]:
    normalization_b = None
    if recipe_cls.data_kind == "two-domain":
        dataset = _domain_dataset(config, settings, recipe_cls, data, resume)
        normalization, normalization_b = dataset.normalizations
    else:
        targets = None
        if recipe_cls.data_kind in TARGET_DATA_KINDS:
            data, targets = split_pairs(data)
        images = [as_medimage(item, name=f"image {k}") for k, item in enumerate(data)]
        if recipe_cls.data_kind == "lesion":
            dataset = _lesion_dataset(config, settings, images, targets or [], resume)
            normalization = dataset.normalization
        else:
            normalization = resume.normalization if resume is not None else recipe_cls.data_normalization(settings)
            if normalization is None:
                normalization = config.fit_normalization([image.array for image in images])
            dataset = _make_dataset(recipe_cls, settings, images, normalization, config, targets)
    if recipe_cls.data_kind == "lesion":
        augment = False
    else:
        augment = config.augment if config.augment is not None else len(dataset) < SMALL_DATA
    data_description = dataset.describe()

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    recipe = recipe_cls()
    recipe.augmenting = augment  # the recipe transforms real and generated images alike (see Recipe.augment)
    recipe.planned_steps = None if recipe_cls.steps_from_data else config.steps
    recipe.prepare(dataset)
    recipe.build(settings, device)
    total = recipe.total_steps() if recipe.steps_from_data else config.steps
    if resume is not None and resume.step >= total:
        raise SettingsError(
            f"checkpoint {config.resume} is at step {resume.step}, the end of recipe {recipe.name!r}'s {total}-step "
            "schedule for this data; nothing is left to train"
        )
    start = 0
    if resume is not None:
        try:
            recipe.load_state_dict(resume.state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {config.resume} does not fit the recipe with these settings "
                f"(were model sizes changed with --set?): {exc}"
            ) from None
        start = resume.step
    if context.is_distributed:
        recipe.distribute(lambda model: distributed.wrap(model, device))
    if context.is_main:
        start_run(config.out_dir, config.recipe, config.resume)
    sampler = StepSampler(
        len(dataset), recipe.batch_size * recipe.batches_per_step, config.seed, context.rank, context.world_size
    )

    def save(step: int) -> Path | None:
        return _save(recipe, config, settings, (normalization, normalization_b), data_description, step, context)

    preview_normalization = normalization
    if isinstance(recipe, TranslationRecipe) and recipe.directions[next(iter(recipe.directions))] == "b":
        preview_normalization = normalization_b

    yield Started(recipe.name, total, start, str(device), context.world_size)
    step, reason, losses = start, "completed", {}
    window: dict[str, list[float]] = {}
    window_start, window_steps = time.perf_counter(), 0
    while step < total:
        if distributed.any_rank(control.stop_requested, context, device):
            reason = "stopped"
            break
        if control.paused:
            yield Paused(step)
            control.wait_while_paused()
            yield Resumed(step)
            window_start, window_steps = time.perf_counter(), 0
            continue
        losses = _step(recipe, dataset, sampler, step, config, context, device)
        step += 1
        window_steps += 1
        for name, value in losses.items():
            window.setdefault(name, []).append(value)
        if step % config.log_every == 0 or step == total:
            elapsed = time.perf_counter() - window_start
            images = window_steps * recipe.batch_size * recipe.batches_per_step * context.world_size
            if context.is_main:
                yield Progress(
                    step=step,
                    total_steps=total,
                    losses={name: float(np.mean(values)) for name, values in window.items()},
                    learning_rates=recipe.learning_rates(),
                    images_per_s=images / elapsed if elapsed > 0 else 0.0,
                    eta_s=(total - step) * elapsed / window_steps,
                    phase=recipe.phase(step - 1),
                )
            window, window_start, window_steps = {}, time.perf_counter(), 0
        if context.is_main and config.sample_every and step % config.sample_every == 0:
            yield _samples(recipe, preview_normalization, dataset.pixel_spacing, config, step)
        if step % config.checkpoint_every == 0 and step < total:
            path = save(step)
            if path is not None:
                yield CheckpointSaved(step, path)
    path = save(step)
    if path is not None:
        yield CheckpointSaved(step, path)
    yield Finished(step=step, checkpoint=path, reason=reason, losses=losses)


def _step(
    recipe: Recipe,
    dataset: SliceDataset,
    sampler: StepSampler,
    step: int,
    config: TrainConfig,
    context: distributed.DistributedContext,
    device: torch.device,
) -> dict[str, float]:
    """One recipe step on the batch of `step`; TrainingError when a loss is not finite."""
    torch.manual_seed(_step_seed(config.seed, context.rank, step))
    batch = torch.stack([dataset[i] for i in sampler.indices(step)]).to(device, non_blocking=True)
    with autocast(device, config.mixed_precision):
        losses = recipe.train_step(batch, step)
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        raise TrainingError(
            f"step {step + 1}: loss {', '.join(f'{k}={v}' for k, v in bad.items())} is not finite; training "
            f"stopped without saving this state (earlier checkpoints in {config.out_dir} are intact): lower the "
            "learning rates, or check the data for extreme values"
        )
    return losses


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _samples(
    recipe: Recipe, normalization: Normalization, spacing: tuple[float, float], config: TrainConfig, step: int
) -> Samples:
    """Preview images from the EMA generator with the same latents every time, in data units."""
    images = recipe.sample(config.preview_samples, torch.Generator().manual_seed(config.seed))
    return Samples(step=step, images=normalization.invert(images[:, 0].numpy()), spacing=spacing)


def _save(
    recipe: Recipe,
    config: TrainConfig,
    settings: Any,
    normalizations: tuple[Normalization, Normalization | None],
    data_description: dict[str, Any],
    step: int,
    context: distributed.DistributedContext,
) -> Path | None:
    """Write the checkpoint of `step` on rank 0 (a collective: every rank calls it); its path on rank 0.

    `normalizations` are the intensity maps of the data and, for two-domain recipes, of domain B.
    """
    for name, model in recipe.models.items():
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingError(f"the weights of {name!r} are not finite at step {step}; no checkpoint was written")
    digests = distributed.gather_strings(distributed.parameter_digest(recipe.models), context)
    if not context.is_main:
        return None
    if len(set(digests)) > 1:
        raise TrainingError(
            f"the ranks' weights diverged at step {step} (digests {digests}); no checkpoint was written"
        )
    checkpoint = Checkpoint(
        recipe=recipe.name,
        settings=to_dict(settings),
        step=step,
        normalization=normalizations[0],
        normalization_b=normalizations[1],
        data=data_description,
        state=recipe.state_dict(),
        seed=config.seed,
        extra={"rank_parameter_sha256": digests} if context.is_distributed else {},
    )
    return save_checkpoint(checkpoint, checkpoint_path(config.out_dir, step))


def _lesion_dataset(
    config: TrainConfig, settings: Any, images: list[MedImage], masks: list[Any], resume: Checkpoint | None
) -> LesionCropDataset:
    """The one lesion crop of a ``"lesion"`` recipe; a resumed run must see the crop its checkpoint saw."""
    if len(images) != 1:
        raise InputError(
            f"recipe {config.recipe!r} trains on one lesion crop, but {len(images)} (image, mask) pairs were given; "
            "give exactly one"
        )
    normalization = resume.normalization if resume is not None else None
    dataset = LesionCropDataset(
        images[0], masks[0], normalization, slice_axis=config.slice_axis, margin=settings.margin
    )
    if resume is not None and resume.data.get("content_sha256") != dataset.content_hash:
        raise CheckpointError(
            f"checkpoint {config.resume} was trained on another lesion crop; resume it with the same image, mask, "
            "slice axis and margin"
        )
    return dataset


def _domain_dataset(
    config: TrainConfig, settings: Any, recipe_cls: type[Recipe], data: Any, resume: Checkpoint | None
) -> DomainPairDataset:
    """The two-domain dataset, each domain in its own intensity map: the resumed or bound one, else fitted."""
    domains = as_two_domains(data, config.recipe)
    if resume is not None and resume.normalization_b is None:
        raise CheckpointError(
            f"checkpoint {config.resume} holds no intensity map of domain B; it was not written by a two-domain run"
        )
    if resume is not None:
        normalizations = (resume.normalization, resume.normalization_b)
    else:
        normalizations = recipe_cls.domain_normalizations(settings)
        if normalizations is None:
            _check_window_fits_both(config, domains)
            normalizations = _fit_domain(config, domains.a, "A"), _fit_domain(config, domains.b, "B")
    options = {"slice_axis": config.slice_axis, "min_foreground": config.min_foreground}
    return DomainPairDataset(
        domains, normalizations, recipe_cls.data_resolution(settings), registered=recipe_cls.registered, **options
    )


def _check_window_fits_both(config: TrainConfig, domains: Any) -> None:
    """InputError for a fixed window on domains in different units: it would clip one of them wrongly."""
    if config.normalization != "window":
        return
    kinds = [
        {(image.modality, image.units) for image in (as_medimage(item) for item in images)}
        for images in (domains.a, domains.b)
    ]
    if kinds[0] != kinds[1]:
        described = [", ".join(f"{m} ({u or 'no units'})" for m, u in sorted(kind)) for kind in kinds]
        raise InputError(
            f"a fixed window (window_center={config.window_center:g}, window_width={config.window_width:g}) is in one "
            f"domain's units, but domain A is {described[0]} and domain B is {described[1]}; use "
            "normalization=percentile, which fits each domain's own range"
        )


def _fit_domain(config: TrainConfig, images: Sequence[Any], domain: str) -> Normalization:
    """The intensity map `config` fits to one domain's images alone (the domains differ in units)."""
    arrays = [as_medimage(image, name=f"domain-{domain} image {k}").array for k, image in enumerate(images)]
    return config.fit_normalization(arrays)


def _make_dataset(
    recipe_cls: type[Recipe],
    settings: Any,
    images: list[MedImage],
    normalization: Normalization,
    config: TrainConfig,
    targets: list[Any] | None = None,
) -> SliceDataset | ClipDataset:
    options = {"slice_axis": config.slice_axis, "min_foreground": config.min_foreground}
    resolution = recipe_cls.data_resolution(settings)
    if recipe_cls.data_kind == "paired":
        return PairedSliceDataset(images, targets or [], normalization, resolution, **options)
    if recipe_cls.data_kind == "sequence":
        return ClipDataset(images, normalization, resolution, settings.frames, **options)
    if recipe_cls.data_kind == "patch":
        return PatchDataset(images, normalization, resolution, **options)
    return SliceDataset(images, normalization, resolution, **options)
