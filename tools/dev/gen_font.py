#!/usr/bin/env python3
"""Rasterise DejaVu Sans Mono (Debian fonts-dejavu-core; Bitstream Vera
license, which allows this) into the 8-bit glyph table segpipe's preview
images use for their legends: printable ASCII, 7x13 pixels per glyph.

  tools/dev/gen_font.py > src/pipeline/font_data.h
"""
from PIL import Image, ImageDraw, ImageFont

W, H, SIZE = 7, 13, 11
font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", SIZE)
print("/* font_data.h: DejaVu Sans Mono %d px rasterised by tools/dev/gen_font.py (generated: do not edit).\n"
      " * Glyphs for ASCII 32..126, %dx%d 8-bit coverage each, rows top to bottom. */" % (SIZE, W, H))
print("#define SP_FONT_W %d\n#define SP_FONT_H %d" % (W, H))
print("static const unsigned char sp_font[95][%d] = {" % (W * H))
for c in range(32, 127):
    im = Image.new("L", (W, H), 0)
    ImageDraw.Draw(im).text((0, -1), chr(c), fill=255, font=font)
    px = list(im.getdata())
    print("    {" + ",".join(str(v) for v in px) + "},")
print("};")
