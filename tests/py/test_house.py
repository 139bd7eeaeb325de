"""The shape of the C code (issue: the house): no file calls back into a file
that calls it (tools/dev/house.py reads the objects' symbols with nm), and no
function over 100 lines. A new circle or a long function fails here, with the
files or the function named."""
import os, subprocess, sys
import sp


def test_no_file_circles_no_long_functions(tmp):
    p = subprocess.run([sys.executable, os.path.join(sp.ROOT, "tools", "dev", "house.py"), os.path.basename(sp.BUILD)],
                       capture_output=True, text=True, cwd=sp.ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 circles, 0 functions over 100 lines" in p.stdout, p.stdout


def test_house_sees_a_circle(tmp):
    """The checker itself: two objects calling each other are reported."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("house", os.path.join(sp.ROOT, "tools", "dev", "house.py"))
    house = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(house)
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert house.circles(edges) == [["a", "b", "c"]]
    src = os.path.join(tmp, "f.c")
    open(src, "w").write("static int f(int x)\n{\n" + "    x++;\n" * 120 + "    return x;\n}\n")
    (name, line, n), = house.functions(src)
    assert (name, line) == ("f", 1) and n == 124
