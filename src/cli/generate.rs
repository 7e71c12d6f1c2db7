//! Man pages and completions from the clap definitions, so they cannot drift from `--help`.

use super::Generate;
use clap::CommandFactory;
use std::io::Write;

pub fn write<C: CommandFactory>(kind: Generate, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    match kind {
        Generate::Man => {
            let section = if name == "llamactld" { "8" } else { "1" };
            clap_mangen::Man::new(cmd)
                .section(section)
                .manual("llamactl")
                .render(out)
        }
        Generate::CompleteBash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out);
            Ok(())
        }
        Generate::CompleteZsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out);
            Ok(())
        }
        Generate::CompleteFish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out);
            Ok(())
        }
    }
}
