"""``vlmedge classify``: whole-image zero-shot classification against labels."""

from __future__ import annotations

import argparse

from vlmedge.cli.args import add_bundle_option


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="zero-shot classify a whole image against labels",
        description="Whole-image zero-shot classification: softmax(logit_scale * cos(image, prompt(label))).")
    p.add_argument("image", help="image file (PNG, JPEG, ...)")
    p.add_argument("--labels", "-l", nargs="+", required=True, metavar="LABEL", help="candidate labels")
    add_bundle_option(p)
    p.add_argument("--prompt", default="a photo of {}",
                   help="prompt template with one {} (default: 'a photo of {}')")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    import json

    from vlmedge.embedded import resolve_bundle
    from vlmedge.runtime.grounding.classify import read_image
    from vlmedge.runtime.grounding.grounder import Grounder

    frame = read_image(args.image)
    grounder = Grounder(resolve_bundle(args.bundle), smoothing=False)
    result = grounder.classify(frame, args.labels, prompt=args.prompt)
    if args.json:
        print(json.dumps({"image": str(args.image), "bundle": grounder.manifest.model_id, **result.to_dict()}))
    else:
        width = max(len(label) for label in result.labels)
        for label, prob in zip(result.labels, result.probs):
            print(f"{label:<{width}}  {prob:6.1%}")
    return 0
