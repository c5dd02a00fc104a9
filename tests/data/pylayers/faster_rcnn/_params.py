"""param_str parsing shared by the Faster R-CNN stand-ins.

py-faster-rcnn reads param_str as YAML ("'num_classes': 21"); these flat "'key': value" strings
are also Python dict bodies, so the stand-ins read them without a YAML dependency.
"""

import ast


def parse(param_str):
    text = param_str.strip()
    return ast.literal_eval(text if text.startswith("{") else "{" + text + "}")
