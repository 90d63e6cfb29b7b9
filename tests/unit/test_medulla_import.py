"""packages.medulla_import: Medulla package folders (conf.json + xmppdeploy.json + files)
become our descriptor. The sample folders under tests/data/packages/medulla-*/ each have
their expected result in tests/data/packages/expected/ (a descriptor, or the refusal)."""

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from twisted.internet.task import Clock

from medulla_agent.steps import StepEngine
from medulla_appliance.packages.descriptor import END_ERROR, END_SUCCESS
from medulla_appliance.packages.medulla_import import convert_medulla, import_medulla_folder
from medulla_appliance.packages.medulla_sequence import parse_condition
from medulla_appliance.packages.medulla_templates import MedullaImportError
from medulla_appliance.packages.store import PackageStore

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "packages")
SAMPLES = sorted(name for name in os.listdir(DATA) if name.startswith("medulla-"))
EXPECTED = os.path.join(DATA, "expected")


def b64(text):
    import base64
    return base64.b64encode(text.encode()).decode()


def ends(n):
    return [{"action": "actionsuccescompletedend", "step": n, "actionlabel": "END_SUCCESS"},
            {"action": "actionerrorcompletedend", "step": n + 1, "actionlabel": "END_ERROR"}]


def convert(steps, os_key="linux", conf=None, info=None, files=(), require_os="linux"):
    conf = dict({"id": "pkg-1", "name": "Pkg", "version": "1"}, **(conf or {}))
    return convert_medulla(conf, {"info": info or {}, os_key: {"sequence": steps}}, files,
                           require_os=require_os)


def install(result, os_name="linux", sequence="install"):
    return [s.to_json() for s in result.descriptor.sequences[os_name][sequence]]


def script(command, **extra):
    return dict({"action": "actionprocessscript", "step": 0, "actionlabel": "s",
                 "command": command}, **extra)


# -- the annotated sample folders -------------------------------------------------------


def test_every_sample_has_an_expected_result():
    for name in SAMPLES:
        assert any(os.path.exists(os.path.join(EXPECTED, name + ext))
                   for ext in (".json", ".error")), name


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_imports_as_expected(name):
    folder = os.path.join(DATA, name)
    expected = os.path.join(EXPECTED, name)
    if os.path.exists(expected + ".json"):
        with open(expected + ".json", encoding="utf-8") as f:
            want = json.load(f)
        result = import_medulla_folder(folder)
        assert result.descriptor.to_json() == want["descriptor"]
        assert list(result.warnings) == want["warnings"]
    else:
        with open(expected + ".error", encoding="utf-8") as f:
            message = f.read().strip()
        with pytest.raises(MedullaImportError) as caught:
            import_medulla_folder(folder)
        assert str(caught.value) == message


def test_imported_sample_goes_into_the_store_and_verifies(tmp_path):
    folder = os.path.join(DATA, "medulla-linux-basic")
    result = import_medulla_folder(folder)
    assert [f.path for f in result.descriptor.files] == ["install.sh", "payload/readme.txt"]
    for entry in result.descriptor.files:
        with open(os.path.join(folder, entry.path), "rb") as f:
            assert entry.sha256 == hashlib.sha256(f.read()).hexdigest()
    store = PackageStore(str(tmp_path / "store"))
    store.add_from_folder(folder, result.descriptor)
    assert store.list() == [result.descriptor.id] and store.verify(result.descriptor.id) == []
    assert "install" in store.get(result.descriptor.id).sequences.get("linux", {})


def test_windows_only_package_is_kept_when_no_os_is_required():
    result = import_medulla_folder(os.path.join(DATA, "medulla-windows-only"), require_os=None)
    (step,) = install(result, "windows")
    assert step["interpreter"] == "cmd.exe" and step["body"].startswith("powershell.exe")
    assert step["on_exit"] == [{"min": 0, "max": 0, "negate": True, "goto": END_ERROR}]


def test_an_os_that_cannot_be_mapped_fails_the_import_when_every_os_is_required():
    with pytest.raises(MedullaImportError, match="reads the Windows registry"):
        import_medulla_folder(os.path.join(DATA, "medulla-multi-os"), require_os=None)


# -- each step type ---------------------------------------------------------------------


@pytest.mark.parametrize("os_key, typescript, interpreter", [
    ("linux", "Batch", "/bin/bash"), ("linux", "python", "/usr/bin/python3"),
    ("linux", "unixKornshell", "/bin/ksh"), ("linux", "unixCshell", "/bin/csh"),
    ("mac", "Batch", "/bin/bash"), ("win", "Batch", "cmd.exe"),
    ("win", "powershell", "powershell.exe"), ("win", "visualbasicscript", "cscript.exe"),
])
def test_script_files_run_with_the_interpreter_of_their_typescript(os_key, typescript,
                                                                   interpreter):
    result = convert([{"action": "actionprocessscriptfile", "step": 0, "typescript": typescript,
                       "script": b64("echo hi\n")}], os_key=os_key, require_os=None)
    os_name = {"linux": "linux", "mac": "macos", "win": "windows"}[os_key]
    (step,) = install(result, os_name)
    assert (step["type"], step["interpreter"], step["body"]) == ("script", interpreter,
                                                                 "echo hi\n")
    assert step["timeout"] == 900 and step["label"] == "step0"


def test_unknown_typescript_is_refused():
    with pytest.raises(MedullaImportError, match=r"typescript: 'perl' has no interpreter"):
        convert([{"action": "actionprocessscriptfile", "step": 0, "typescript": "perl",
                  "script": "print 1"}])


@pytest.mark.parametrize("action, timeout", [("actionprocessscript", 800),
                                             ("action_command_natif_shell", 15)])
def test_command_lines_run_through_sh(action, timeout):
    (step,) = install(convert([script("ls -l /tmp | wc -l", action=action)]))
    assert (step["interpreter"], step["body"], step["timeout"]) == ("/bin/sh",
                                                                    "ls -l /tmp | wc -l",
                                                                    timeout)


def test_timeouts_are_read_from_strings_and_brought_within_limits():
    result = convert([script("true", timeout="120.5"),
                      dict(script("true", timeout=10 ** 9), step=1, actionlabel="t")])
    first, second = install(result)
    assert first["timeout"] == 120.5 and second["timeout"] == 86400
    assert any("brought within" in w for w in result.warnings)
    with pytest.raises(MedullaImportError, match="timeout: expected a number"):
        convert([script("true", timeout="soon")])


def test_set_environ_becomes_set_env():
    (step,) = install(convert([{"action": "action_set_environ", "step": 0,
                                "environ": {"MODE": "quiet", "RETRIES": 3}}]))
    assert step["type"] == "set_env" and step["env"] == {"MODE": "quiet", "RETRIES": "3"}
    with pytest.raises(MedullaImportError, match="expected an object of variables"):
        convert([{"action": "action_set_environ", "step": 0, "environ": "MODE=1"}])
    with pytest.raises(MedullaImportError, match="invalid variable name"):
        convert([{"action": "action_set_environ", "step": 0, "environ": {"A-B": "1"}}])


def test_wait_and_goto():
    steps = [{"action": "actionwaitandgoto", "step": 0, "actionlabel": "w"},
             {"action": "actionwaitandgoto", "step": 1, "waiting": "2", "goto": 0}]
    first, second = install(convert(steps))
    assert (first["type"], first["seconds"], first["on_success"]) == ("wait", 10, "step1")
    assert (second["seconds"], second["on_success"]) == (2, "w")


@pytest.mark.parametrize("target, kind", [("MA", "reboot"), ("AM", "restart_agent"),
                                          (None, "reboot")])
def test_restart_goes_on_with_the_next_step_afterwards(target, kind):
    restart = {"action": "actionrestart", "step": 0, "goto": "END_ERROR"}
    if target:
        restart["targetrestart"] = target
    first, second = install(convert([restart, dict(script("true"), step=1)]))
    assert (first["type"], first["on_success"], first["on_error"]) == (kind, "s", END_ERROR)
    assert second["label"] == "s"


def test_end_steps_become_the_built_in_ends():
    steps = [script("true", success=2, error=3), {"action": "action_comment", "step": 1},
             *ends(2)]
    (step,) = install(convert(steps))
    assert (step["on_success"], step["on_error"]) == (END_SUCCESS, END_ERROR)


def test_comments_and_no_operations_are_dropped_and_jumps_land_after_them():
    steps = [script("true", success=1),
             {"action": "action_comment", "step": 1, "comment": "hello"},
             {"action": "action_no_operation", "step": 2},
             dict(script("echo last"), step=3, actionlabel="last")]
    first, last = install(convert(steps))
    assert first["on_success"] == "last" and last["on_success"] == END_SUCCESS


def test_a_failing_exit_never_flows_on_to_the_next_step():
    # Recent Medulla agents go to the next step after an unmatched non-zero exit.
    first, _ = install(convert([script("false"), dict(script("true"), step=1,
                                                      actionlabel="t")]))
    assert (first["on_success"], first["on_error"], first["accept_codes"]) == ("t",
                                                                               END_ERROR, [0])


def test_success_and_error_jumps_by_number_label_or_old_spelling():
    steps = [script("x", succes="2", error="cleanup"),
             dict(script("y"), step=1, actionlabel="cleanup"),
             dict(script("z"), step=2, actionlabel="z")]
    first = install(convert(steps))[0]
    assert (first["on_success"], first["on_error"]) == ("z", "cleanup")


@pytest.mark.parametrize("ref, message", [(7, "no step 7"), ("NOWHERE", "no step labelled"),
                                          (True, "expected a step number or label"),
                                          ([1], "expected a step number or label")])
def test_unknown_jump_targets_are_refused(ref, message):
    with pytest.raises(MedullaImportError, match=message):
        convert([script("x", error=ref)])


def test_references_to_end_labels_work_without_end_steps():
    (step,) = install(convert([script("x", success="END_ERROR", error="END_SUCCESS")]))
    assert (step["on_success"], step["on_error"]) == (END_ERROR, END_SUCCESS)


@pytest.mark.parametrize("condition, rule", [
    ("5", {"min": 5, "max": 5}), ("==5", {"min": 5, "max": 5}), ("=5", {"min": 5, "max": 5}),
    ("!=0", {"min": 0, "max": 0, "negate": True}), ("!0", {"min": 0, "max": 0, "negate": True}),
    ("<5", {"max": 4}), ("<=5", {"max": 5}), (">5", {"min": 6}), (">=5", {"min": 5}),
    ("-1", {"min": -1, "max": -1}), ("IN100,199", {"min": 100, "max": 199, "negate": False}),
    ("in 1 , 3", {"min": 1, "max": 3, "negate": False}),
    ("OUT0,1", {"min": 0, "max": 1, "negate": True}),
])
def test_gotoreturncode_conditions(condition, rule):
    assert parse_condition(condition) == rule


@pytest.mark.parametrize("condition", ["<>3", "x", "IN5,1", "5,6", "== ", "OUT1"])
def test_bad_gotoreturncode_conditions_are_refused(condition):
    with pytest.raises(MedullaImportError):
        parse_condition(condition)


def test_return_code_jumps_keep_the_package_order():
    steps = [script("x", **{"gotoreturncode@3010": "reboot", "gotoreturncode@!=0": "END_ERROR",
                            "gotoreturncode@0": "END_SUCCESS"}),
             {"action": "actionrestart", "step": 1, "actionlabel": "reboot"}]
    first = install(convert(steps))[0]
    assert [(r["min"], r["max"], r["negate"], r["goto"]) for r in first["on_exit"]] == [
        (3010, 3010, False, "reboot"), (0, 0, True, END_ERROR), (0, 0, False, END_SUCCESS)]


def test_jumps_on_return_codes_drive_the_engine():
    """The imported returncodes sample, run: 150 -> wait 30 s and retry; 3010 -> reboot;
    after the reboot, verify; and a 250 ends the run in error."""
    result = import_medulla_folder(os.path.join(DATA, "medulla-linux-returncodes"))
    steps = result.descriptor.sequences["linux"]["install"]
    codes = {"check": [1], "install": [150, 3010], "verify": [0]}
    ran, done = [], []

    class Runner:
        def run_script(self, interpreter, body, env, timeout):
            label = {"dpkg": "check", "apt-": "install", "samp": "verify"}[body[:4]]
            ran.append(label)
            return codes[label].pop(0), b""

        def reboot(self):
            ran.append("reboot")
            return 0, b""

    clock, saved = Clock(), []
    engine = StepEngine(steps, Runner(), clock, lambda *a: None, lambda *a: done.append(a),
                        persist=saved.append)
    engine.start()
    assert ran == ["check", "install"]
    clock.advance(30)
    assert ran == ["check", "install", "install", "reboot"] and not done
    # The machine reboots; the next agent resumes from what was saved before the reboot.
    engine = StepEngine(steps, Runner(), Clock(), lambda *a: None, lambda *a: done.append(a),
                        state=json.loads(json.dumps(saved[-1])))
    engine.start()
    assert ran[-1] == "verify" and done == [("success", "verify", 0)]
    codes["check"], codes["install"] = [1], [250]
    StepEngine(steps, Runner(), Clock(), lambda *a: None, lambda *a: done.append(a)).start()
    assert done[-1] == ("error", "install", 250)


# -- sections, OSes, package-level fields -----------------------------------------------


def test_sections_split_into_sequences_and_unreachable_steps_are_left_out():
    steps = [{"action": "action_section_install", "step": 0},
             script("install", step=1, actionlabel="i"),
             {"action": "action_section_uninstall", "step": 2},
             script("remove", step=3, actionlabel="r"),
             script("never reached", step=4, actionlabel="n"), *ends(5)]
    steps[3]["success"] = "END_SUCCESS"
    result = convert(steps)
    assert sorted(result.descriptor.sequences["linux"]) == ["install", "uninstall"]
    (i,) = install(result)
    assert (i["label"], i["on_success"]) == ("i", END_SUCCESS)   # the next marker ends it
    assert [s["label"] for s in install(result, sequence="uninstall")] == ["r"]


def test_without_an_install_marker_install_starts_at_the_first_step():
    steps = [{"action": "action_section_uninstall", "step": 0}, script("remove", step=1)]
    result = convert(steps)
    assert install(result) == [{"type": "end_success", "label": "end_success"}]
    assert install(result, sequence="uninstall")[0]["body"] == "remove"


def test_a_second_marker_of_one_section_is_refused():
    with pytest.raises(MedullaImportError, match="a second action_section_install"):
        convert([{"action": "action_section_install", "step": 0},
                 {"action": "action_section_install", "step": 1}])


def test_unknown_os_key_is_refused_and_other_keys_ignored():
    with pytest.raises(MedullaImportError, match="unknown OS"):
        convert([script("x")], os_key="solaris")
    result = convert_medulla({"id": "p", "name": "P"}, {"linux": {"sequence": [script("x")]},
                                                        "notes": "hand-written"})
    assert any("'notes' ignored" in w for w in result.warnings)


def test_dependencies_are_refused():
    with pytest.raises(MedullaImportError, match="depends on other packages"):
        convert([script("x")], info={"Dependency": ["other-uuid"]})


def test_transferfile_false_sends_no_files():
    files = [{"path": "a", "sha256": "0" * 64, "size": 0}]
    assert convert([script("x")], files=files).descriptor.files != ()
    result = convert([script("x")], files=files, info={"transferfile": False})
    assert result.descriptor.files == () and any("not sent" in w for w in result.warnings)


def test_duplicate_action_labels_are_refused():
    with pytest.raises(MedullaImportError, match="label 's' also names step 0"):
        convert([script("x"), script("y", step=1)])


def test_labels_that_do_not_fit_are_renamed():
    steps = [script("x", actionlabel="has space"), script("y", step=1, actionlabel="step0")]
    assert [s["label"] for s in install(convert(steps))] == ["step0", "step1"]


# -- script text ------------------------------------------------------------------------


def test_base64_scripts_are_decoded_and_plain_ones_kept():
    for text, body in [(b64("echo é\n"), "echo é\n"), ("ls -l", "ls -l"), ("abcd", "abcd"),
                       (b64("\x01\x02binary"), b64("\x01\x02binary"))]:
        assert install(convert([script(text)]))[0]["body"] == body


def test_backslashes_are_doubled_in_script_files_as_medulla_writes_them():
    steps = [{"action": "actionprocessscriptfile", "step": 0, "typescript": "Batch",
              "script": "printf 'a\\tb\\n'"}, script("printf 'a\\tb\\n'", step=1)]
    result = convert(steps)
    file_step, command = install(result)
    assert file_step["body"] == "printf 'a\\\\tb\\\\n'" and command["body"] == "printf 'a\\tb\\n'"
    assert any("backslashes doubled" in w for w in result.warnings)


def test_another_package_folder_is_refused_and_own_is_fine():
    assert install(convert([script("x", packageuuid="pkg-1")]))
    with pytest.raises(MedullaImportError, match="another package's folder"):
        convert([script("x", packageuuid="other")])


# -- templates --------------------------------------------------------------------------

RUNTIME = {"MEDULLA_HOSTNAME": "pc-01", "MEDULLA_TMP_DIR": "/tmp/medulla",
           "MEDULLA_SESSION_ID": "dep-42", "MEDULLA_PACKAGE_DIR": "/var/lib/pkg"}
TEXTUAL = {"@@@HOSTNAME@@@": "pc-01", "@@@TMP_DIR@@@": "/tmp/medulla",
           "@@@SESSION_ID@@@": "dep-42", "@@@PACKAGE_DIRECTORY_ABS_MACHINE@@@": "/var/lib/pkg",
           "@@@PACKAGE_NAME@@@": "Pkg", "@@@UUID_PACKAGE@@@": "pkg-1", "@@@PATH_SEP@@@": "/",
           "@_@MODE@_@": "quiet"}
SHELL_SCRIPTS = [
    'echo "@@@HOSTNAME@@@"', "echo '@@@HOSTNAME@@@'", "echo @@@HOSTNAME@@@",
    "echo \"$(echo '@@@HOSTNAME@@@')\"", "echo `echo @@@HOSTNAME@@@`",
    "cat <<EOF\nhost @@@HOSTNAME@@@ '@@@TMP_DIR@@@'\nEOF\necho '@@@SESSION_ID@@@'",
    "cat <<-EOF\n\thost @@@HOSTNAME@@@\n\tEOF",
    "# comment @@@HOSTNAME@@@ 'unbalanced\necho '@@@HOSTNAME@@@'",
    "echo 'a'\"@@@HOSTNAME@@@\"'b'@@@HOSTNAME@@@", "x='it''s @@@HOSTNAME@@@'; echo \"$x\"",
    "echo \"it's @@@HOSTNAME@@@\" 'and @@@TMP_DIR@@@'",
    "case a in a) echo '@@@HOSTNAME@@@';; esac; echo '@@@TMP_DIR@@@'",
    "echo $(( 1 + 2 )) '@@@HOSTNAME@@@'", 'echo "${UNSET:-@@@HOSTNAME@@@}"',
    "echo @@@PACKAGE_NAME@@@ '@@@UUID_PACKAGE@@@' @@@PACKAGE_DIRECTORY_ABS_MACHINE@@@"
    "@@@PATH_SEP@@@x", "echo '@_@MODE@_@' @_@MODE@_@", "echo \"$(echo \"@@@HOSTNAME@@@\")\"",
    "echo a\\'b '@@@HOSTNAME@@@'", "echo <<<'@@@HOSTNAME@@@'",
    "echo $((1<<2)) '@@@HOSTNAME@@@'", "(( x = 1 << 2 )); echo \"$x\" '@@@HOSTNAME@@@'",
    "f() { echo '@@@HOSTNAME@@@'; }; f", "echo $(echo $((2*(3+1))) '@@@HOSTNAME@@@')",
]


def textual(text):
    for template, value in TEXTUAL.items():
        text = text.replace(template, value)
    return text


@pytest.mark.parametrize("text", SHELL_SCRIPTS)
def test_mapped_shell_templates_print_what_medulla_would_have_printed(text):
    (step,) = install(convert([script(text)]))
    assert "@@@" not in step["body"] and "@_@" not in step["body"]
    env = dict(RUNTIME, PATH="/usr/bin:/bin", MODE="quiet")

    def run(body):
        return subprocess.run(["/bin/bash", "-c", body], env=env, capture_output=True,
                              timeout=10).stdout

    assert run(step["body"]) == run(textual(text))


def test_clock_templates_are_evaluated_when_the_step_runs():
    (step,) = install(convert([script("echo '@@@NOW_EPOCH@@@' @@@DATE_YYYYMMDD@@@")]))
    assert step["body"] == "echo ''\"$(date +%s)\"'' $(date -u +%Y%m%d)"
    out = subprocess.run(["/bin/sh", "-c", step["body"]], capture_output=True, text=True,
                         timeout=10).stdout.split()
    assert out[0].isdigit() and len(out[1]) == 8


def test_previous_step_templates_use_the_engine_variables():
    (step,) = install(convert([script("echo @@@PREC_RETURNCODE@@@ \"@@@PREC_RESULT@@@\"")]))
    assert step["body"] == 'echo ${MEDULLA_PREV_RET} "${MEDULLA_PREV_OUTPUT}"'


def test_windows_batch_uses_percent_variables():
    result = convert([{"action": "actionprocessscriptfile", "step": 0, "typescript": "Batch",
                       "script": "copy x @@@TMP_DIR@@@@@@PATH_SEP@@@x & echo @_@MODE@_@"}],
                     os_key="win", require_os=None)
    assert install(result, "windows")[0]["body"] == "copy x %MEDULLA_TMP_DIR%\\x & echo %MODE%"
    with pytest.raises(MedullaImportError, match="cannot be mapped in a Windows batch"):
        convert([script("echo @@@NOW_EPOCH@@@")], os_key="win", require_os=None)


@pytest.mark.parametrize("steps, message", [
    ([{"action": "actionprocessscriptfile", "step": 0, "typescript": "python",
       "script": "print('@@@HOSTNAME@@@')"}],
     "read the environment variable MEDULLA_HOSTNAME instead"),
    ([{"action": "action_set_environ", "step": 0, "environ": {"H": "@@@HOSTNAME@@@"}}],
     "needs a value known only when the step runs"),
    ([script("echo \\@@@HOSTNAME@@@")], "it follows a backslash"),
    ([script("echo $'@@@HOSTNAME@@@'")], "inside $'...' quotes"),
    ([script("cat <<\"EOF\"\n@@@HOSTNAME@@@\nEOF")], "quoted here-document"),
    ([script("echo @@@PLUGIN_CALL_update_linux_command@@@")], "calls a Medulla agent plugin"),
    ([script('echo @@@PLUGIN_CALL_"My_Plugin"@@@')], "calls a Medulla agent plugin"),
    ([script("echo @@@UPDATE_LINUX@@@")], "update_linux_command agent plugin"),
    ([script("echo @@@ADVANCED_PARAM_DEPLOY_JSON@@@")], "deployment parameters"),
    ([script("echo @@@DYNAMIC_PARAM_DEPLOY@@@")], "deployment parameters"),
    ([script("echo @@@VRW@@@HKLM@@K@@S@@K@@V@@@VRW@@@")], "Windows registry"),
    ([script("echo @_@NOT-A-NAME@_@")], "not an environment variable name"),
    ([script("echo @@@HOSTNAMES@@@")], "unknown template"),
])
def test_templates_that_cannot_be_mapped_are_refused(steps, message):
    with pytest.raises(MedullaImportError) as caught:
        convert(steps)
    assert message in str(caught.value)


def test_static_templates_are_allowed_in_set_env():
    (step,) = install(convert([{"action": "action_set_environ", "step": 0,
                                "environ": {"WHAT": "@@@PACKAGE_NAME@@@ on @@@OS_FAMILY@@@"}}]))
    assert step["env"] == {"WHAT": "Pkg on Linux"}


# -- the folder -------------------------------------------------------------------------


@pytest.fixture
def medulla_folder(tmp_path):
    folder = tmp_path / "pkg"
    shutil.copytree(os.path.join(DATA, "medulla-linux-basic"), folder)
    return folder


def test_a_symlink_in_the_package_folder_is_refused(medulla_folder):
    os.symlink("/etc/passwd", medulla_folder / "passwd")
    with pytest.raises(MedullaImportError, match="passwd: not a regular file"):
        import_medulla_folder(str(medulla_folder))


def test_a_symlinked_folder_in_the_package_folder_is_refused(medulla_folder):
    os.symlink("/etc", medulla_folder / "etc")
    with pytest.raises(MedullaImportError, match="etc: not a regular file"):
        import_medulla_folder(str(medulla_folder))


def test_a_file_name_we_cannot_serve_is_refused(medulla_folder):
    (medulla_folder / "win\\path.exe").write_text("x")
    with pytest.raises(MedullaImportError, match="backslash in path"):
        import_medulla_folder(str(medulla_folder))


@pytest.mark.parametrize("name, content, message", [
    ("conf.json", None, "conf.json: missing"),
    ("conf.json", b"\xff\xfe", "conf.json: not UTF-8"),
    ("xmppdeploy.json", b"[1, 2", "xmppdeploy.json: not valid JSON"),
    ("xmppdeploy.json", b"[]", "xmppdeploy.json: expected a JSON object"),
    ("xmppdeploy.json", b'{"linux": {"sequence": []}}', "expected a non-empty list of steps"),
    ("xmppdeploy.json", b'{"linux": {"sequence": [{"step": 0}]}}',
     'expected an object with an "action"'),
    ("xmppdeploy.json", b'{"info": []}', "info: expected an object"),
    ("xmppdeploy.json", b'{"info": {}}', "no sequence for any OS"),
])
def test_broken_medulla_files_are_refused_clearly(medulla_folder, name, content, message):
    if content is None:
        (medulla_folder / name).unlink()
    else:
        (medulla_folder / name).write_bytes(content)
    with pytest.raises(MedullaImportError) as caught:
        import_medulla_folder(str(medulla_folder))
    assert message in str(caught.value)
