"""<Method name> (<authors year>; <official repo>@<commit>:<path of the loss>).

Copy this file to `<name>.py` and describe here what the method does, which official code it
follows, and every deliberate deviation from that code. Files starting with `_` are not
imported by the package, so the template is registered only where a test imports it.
"""
from ltbench import losses
from ltbench.methods import register
from ltbench.methods.base import LDAM_CIFAR, Method


@register("template")
class Template(Method):
    views = ("standard",)              # augmented views per image: names in ltbench.data.views.VIEWS
    sampler = "instance"
    classifier = "linear"
    defaults = {"tau": 1.0}            # hyper-parameters; config overrides them by name
    recipes = {"cifar": LDAM_CIFAR}    # the paper's recipe per dataset family

    def loss(self, views, y, step):
        return losses.logit_adjusted(self(views[0]), y, self.counts, self.p["tau"])
