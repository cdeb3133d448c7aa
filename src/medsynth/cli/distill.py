"""`medsynth distill`: `medsynth train --recipe distill` with the distillation settings as flags.

``medsynth distill --teacher CKPT --data PATH --out DIR`` trains a student of the teacher's
architecture at ``--width-factor`` (`medsynth.training.recipes.distill`); every other flag is
`medsynth train`'s, except the normalisation options: the student uses its teacher's intensity map.
"""

from __future__ import annotations


def register(subparsers) -> None:
    from medsynth.cli.flags import add_setting_flags
    from medsynth.cli.train import add_run_arguments
    from medsynth.training.distill_settings import DistillSettings

    distill = subparsers.add_parser(
        "distill",
        help="distill a trained image GAN into a small, fast student",
        description="Train a student generator (the teacher's architecture at --width-factor) from a teacher "
        "checkpoint (dcgan, wgan-gp or hagan) and real images: `medsynth train --recipe distill`.",
    )
    add_run_arguments(distill, normalization=False)
    add_setting_flags(distill, DistillSettings, "distillation (any of them also as --set KEY=VALUE)")
    distill.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from medsynth.cli.flags import given_settings
    from medsynth.cli.train import run_train
    from medsynth.training.distill_settings import DistillSettings

    args.recipe = "distill"
    args.set = [f"{key}={value}" for key, value in given_settings(args, DistillSettings).items()] + args.set
    return run_train(args)
