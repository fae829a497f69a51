"""Pipeline stages in flow order: s1 scenarios -> s2 dialogue -> s3 tts -> s4 gates -> s5 units.

The writer (`pipeline.io.shards`) is the last step and runs on the driver.
"""
