"""Test doubles for the harness: a loopback ADB device (fake_adbd) that the real adb client drives."""
