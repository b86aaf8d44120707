"""Synthetic voices in eleven languages other than English, as a separate source set for simulate_mos.py.

    python training/multilingual_voices.py   # reads data/recipe/sources, writes data/recipe/sources-multi
    python training/simulate_mos.py --sources data/recipe/sources-multi --out data/recipe/mos-multi ...

Why: every other source of the recipe is English (real speakers) or English synthetic voices, and the model learnt
a language bias with them: the same espeak-ng voices, clean, scored 4.3 in English but 2.5-3.9 in the other
languages (docs/results.md, seventh version). Listeners rate quality, not language, so the recipe draws a corpus
from these voices too.

Writes, in ``--out``: ``speech_{train,val,test}.csv`` (as prepare_sources.py writes them; the voices rendered
into ``--out``/synth) and copies of the main sources' noise and RIR lists, so that simulate_mos.py reads the folder
as it reads ``sources/``. Split by language, so the test languages are unheard in training: Italian and Polish
for test (Italian also being the language of the real held-out IVR voice, see quality_checks.py), Dutch for
validation, the other eight for training. The main sources and the corpora drawn from them are unchanged.
Needs espeak-ng (Debian: apt-get install -y espeak-ng); re-running keeps rendered files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_sources import ESPEAK_VARIANTS, REPO, SPLITS, _render  # noqa: E402

LANGUAGE_SPLIT = {"it": "test", "pl": "test", "nl": "val"}  # every other language: train

# Everyday sentences, a dozen per language: prompts, questions, numbers and plain narrative, as in English.
SENTENCES = {
    "de": [
        "Das Wetter war heute Morgen kalt, also blieben wir drinnen und lasen ein Buch.",
        "Bitte rufen Sie mich zurück, wenn Sie einen Moment Zeit haben.",
        "Der Zug nach Hamburg fährt um sieben Uhr zwanzig von Gleis drei ab.",
        "Hast du gesehen, wo ich meine Brille hingelegt habe?",
        "Meine Schwester hat gestern einen alten Tisch auf dem Markt gekauft.",
        "Drücken Sie die Eins für den Verkauf oder die Zwei für den technischen Support.",
        "Im Garten hinter dem Haus sangen die Vögel in den hohen Bäumen.",
        "Wir brauchen drei Eier, eine Tasse Mehl und etwas Milch.",
        "Die Besprechung wurde auf Donnerstag um zehn Uhr fünfzehn verschoben.",
        "Warum hat der Fahrer die schwere Tür nicht geschlossen?",
        "Morgen steigt die Temperatur auf dreiundzwanzig Grad.",
        "Vielen Dank für Ihre Geduld, ein Mitarbeiter ist gleich für Sie da.",
    ],
    "fr": [
        "Il faisait froid ce matin, alors nous sommes restés à l'intérieur pour lire.",
        "Rappelez-moi quand vous aurez un moment, s'il vous plaît.",
        "Le train pour Lyon part à sept heures vingt du quai numéro trois.",
        "Est-ce que quelqu'un a vu où j'ai posé mes lunettes?",
        "Ma sœur a acheté une vieille table au marché hier après-midi.",
        "Tapez un pour le service commercial, ou deux pour l'assistance technique.",
        "Les oiseaux chantaient dans les grands arbres derrière la maison.",
        "Il nous faut trois œufs, une tasse de farine et un peu de lait.",
        "La réunion a été déplacée à jeudi, dix heures et quart.",
        "Pourquoi le chauffeur n'a-t-il pas fermé la lourde porte?",
        "Demain, la température atteindra vingt-trois degrés.",
        "Merci de patienter, un conseiller va prendre votre appel.",
    ],
    "es": [
        "Hacía frío esta mañana, así que nos quedamos en casa leyendo un libro.",
        "Por favor, llámeme cuando tenga un momento.",
        "El tren a Sevilla sale a las siete y veinte del andén tres.",
        "¿Alguien ha visto dónde dejé mis gafas?",
        "Mi hermana compró ayer una mesa antigua en el mercado.",
        "Pulse uno para ventas o dos para soporte técnico.",
        "Los pájaros cantaban en los árboles altos detrás de la casa.",
        "Necesitamos tres huevos, una taza de harina y un poco de leche.",
        "La reunión se ha trasladado al jueves a las diez y cuarto.",
        "¿Por qué el conductor no cerró la puerta pesada?",
        "Mañana la temperatura llegará a veintitrés grados.",
        "Gracias por esperar, un agente le atenderá en breve.",
    ],
    "pt": [
        "Estava frio esta manhã, por isso ficámos em casa a ler um livro.",
        "Por favor, ligue-me de volta quando tiver um momento.",
        "O comboio para o Porto parte às sete e vinte da linha três.",
        "Alguém viu onde deixei os meus óculos?",
        "A minha irmã comprou ontem uma mesa antiga no mercado.",
        "Prima um para vendas ou dois para apoio técnico.",
        "Os pássaros cantavam nas árvores altas atrás da casa.",
        "Precisamos de três ovos, uma chávena de farinha e um pouco de leite.",
        "A reunião foi adiada para quinta-feira às dez e um quarto.",
        "Porque é que o motorista não fechou a porta pesada?",
        "Amanhã a temperatura vai chegar aos vinte e três graus.",
        "Obrigado por aguardar, um assistente irá atendê-lo em breve.",
    ],
    "sv": [
        "Det var kallt i morse, så vi stannade inne och läste en bok.",
        "Ring mig gärna tillbaka när du har en stund över.",
        "Tåget till Göteborg går klockan sju och tjugo från spår tre.",
        "Har någon sett var jag lade mina glasögon?",
        "Min syster köpte ett gammalt bord på marknaden i går.",
        "Tryck ett för försäljning eller två för teknisk support.",
        "Fåglarna sjöng i de höga träden bakom huset.",
        "Vi behöver tre ägg, en kopp mjöl och lite mjölk.",
        "Mötet har flyttats till torsdag klockan kvart över tio.",
        "Varför stängde inte chauffören den tunga dörren?",
        "I morgon stiger temperaturen till tjugotre grader.",
        "Tack för att du väntar, en handläggare hjälper dig strax.",
    ],
    "ru": [
        "Утром было холодно, поэтому мы остались дома и читали книгу.",
        "Пожалуйста, перезвоните мне, когда у вас будет минутка.",
        "Поезд в Москву отправляется в семь двадцать с третьего пути.",
        "Кто-нибудь видел, куда я положил свои очки?",
        "Вчера моя сестра купила на рынке старый стол.",
        "Нажмите один для отдела продаж или два для технической поддержки.",
        "Птицы пели на высоких деревьях за домом.",
        "Нам нужны три яйца, стакан муки и немного молока.",
        "Встречу перенесли на четверг, на десять пятнадцать.",
        "Почему водитель не закрыл тяжёлую дверь?",
        "Завтра температура поднимется до двадцати трёх градусов.",
        "Спасибо за ожидание, оператор скоро ответит вам.",
    ],
    "cs": [
        "Ráno byla zima, tak jsme zůstali doma a četli knihu.",
        "Zavolejte mi prosím zpátky, až budete mít chvilku.",
        "Vlak do Brna odjíždí v sedm dvacet ze třetí koleje.",
        "Neviděl někdo, kam jsem dal své brýle?",
        "Moje sestra včera koupila na trhu starý stůl.",
        "Stiskněte jedničku pro prodej nebo dvojku pro technickou podporu.",
        "Ptáci zpívali ve vysokých stromech za domem.",
        "Potřebujeme tři vejce, hrnek mouky a trochu mléka.",
        "Schůzka byla přesunuta na čtvrtek na čtvrt na jedenáct.",
        "Proč řidič nezavřel ty těžké dveře?",
        "Zítra teplota vystoupí na dvacet tři stupňů.",
        "Děkujeme za trpělivost, operátor se vám brzy ozve.",
    ],
    "tr": [
        "Bu sabah hava soğuktu, bu yüzden evde kalıp kitap okuduk.",
        "Lütfen müsait olduğunuzda beni geri arayın.",
        "Ankara treni yedi yirmide üçüncü perondan kalkıyor.",
        "Gözlüğümü nereye koyduğumu gören oldu mu?",
        "Kız kardeşim dün pazardan eski bir masa aldı.",
        "Satış için bire, teknik destek için ikiye basın.",
        "Kuşlar evin arkasındaki uzun ağaçlarda şarkı söylüyordu.",
        "Üç yumurta, bir fincan un ve biraz süt lazım.",
        "Toplantı perşembe saat onu çeyrek geçeye ertelendi.",
        "Şoför ağır kapıyı neden kapatmadı?",
        "Yarın sıcaklık yirmi üç dereceye çıkacak.",
        "Beklediğiniz için teşekkürler, bir temsilci birazdan size bağlanacak.",
    ],
    "nl": [
        "Het was koud vanochtend, dus we bleven binnen en lazen een boek.",
        "Wilt u mij terugbellen als u even tijd heeft?",
        "De trein naar Utrecht vertrekt om zeven uur twintig van spoor drie.",
        "Heeft iemand gezien waar ik mijn bril heb gelaten?",
        "Mijn zus heeft gisteren een oude tafel op de markt gekocht.",
        "Toets één voor verkoop of twee voor technische ondersteuning.",
        "De vogels zongen in de hoge bomen achter het huis.",
        "We hebben drie eieren, een kopje bloem en wat melk nodig.",
        "De vergadering is verplaatst naar donderdag kwart over tien.",
        "Waarom heeft de chauffeur de zware deur niet dichtgedaan?",
        "Morgen wordt het drieëntwintig graden.",
        "Bedankt voor uw geduld, een medewerker helpt u zo.",
    ],
    "it": [
        "Stamattina faceva freddo, così siamo rimasti in casa a leggere un libro.",
        "Per favore, mi richiami quando ha un momento.",
        "Il treno per Milano parte alle sette e venti dal binario tre.",
        "Qualcuno ha visto dove ho lasciato gli occhiali?",
        "Ieri mia sorella ha comprato un vecchio tavolo al mercato.",
        "Prema uno per le vendite o due per l'assistenza tecnica.",
        "Gli uccelli cantavano sugli alberi alti dietro la casa.",
        "Ci servono tre uova, una tazza di farina e un po' di latte.",
        "La riunione è stata spostata a giovedì alle dieci e un quarto.",
        "Perché l'autista non ha chiuso la porta pesante?",
        "Domani la temperatura salirà a ventitré gradi.",
        "Grazie per l'attesa, un operatore le risponderà a breve.",
    ],
    "pl": [
        "Rano było zimno, więc zostaliśmy w domu i czytaliśmy książkę.",
        "Proszę oddzwonić, kiedy będzie pan miał chwilę.",
        "Pociąg do Krakowa odjeżdża o siódmej dwadzieścia z toru trzeciego.",
        "Czy ktoś widział, gdzie położyłem okulary?",
        "Moja siostra kupiła wczoraj na targu stary stół.",
        "Naciśnij jeden, aby połączyć się z działem sprzedaży, lub dwa, aby uzyskać pomoc techniczną.",
        "Ptaki śpiewały na wysokich drzewach za domem.",
        "Potrzebujemy trzech jajek, szklanki mąki i trochę mleka.",
        "Spotkanie przeniesiono na czwartek na dziesiątą piętnaście.",
        "Dlaczego kierowca nie zamknął ciężkich drzwi?",
        "Jutro temperatura wzrośnie do dwudziestu trzech stopni.",
        "Dziękujemy za cierpliwość, konsultant wkrótce się z panem połączy.",
    ],
}


def render_jobs(out_dir: Path, per_language: int, seed: int) -> list[dict]:
    """``per_language`` renderings per language: its sentences in turn, each with a random espeak-ng variant,
    speed and pitch (the ranges prepare_sources.py uses for English)."""
    rng = np.random.default_rng(seed + 7)
    jobs = []
    for lang, texts in SENTENCES.items():
        for i in range(per_language):
            variant = ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))]
            jobs.append(
                dict(
                    engine="espeak-ng",
                    voice=f"{lang}+{variant}",
                    text=texts[i % len(texts)],
                    speed=int(rng.integers(125, 211)),
                    pitch=int(rng.integers(20, 81)),
                    out=str(out_dir / lang / f"{lang}_{variant}_{i:03d}.flac"),
                )
            )
    return jobs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sources",
        default=str(REPO / "data" / "recipe" / "sources"),
        help="prepare_sources.py output (its noise and RIR lists are copied)",
    )
    ap.add_argument("--out", default=str(REPO / "data" / "recipe" / "sources-multi"))
    ap.add_argument("--per-language", type=int, default=120, help="renderings per language")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4, help="parallel TTS processes")
    args = ap.parse_args(argv)
    sources, out = Path(args.sources), Path(args.out)
    if not (sources / "noise_train.csv").exists():
        ap.error(f"{sources}: no noise_train.csv (run training/prepare_sources.py first)")
    if shutil.which("espeak-ng") is None and not (out / "synth").is_dir():
        ap.error("espeak-ng not found (Debian: apt-get install -y espeak-ng)")
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        rows = [r for r in pool.map(_render, render_jobs(out / "synth", args.per_language, args.seed)) if r is not None]
    speech = pd.DataFrame(rows).drop(columns=["text"])
    speech["corpus"] = "synthetic_espeak-ng_multilingual"
    speech["language"] = [v.split(":")[1].split("+")[0] for v in speech["speaker"]]
    speech["split"] = speech["language"].map(lambda lang: LANGUAGE_SPLIT.get(lang, "train"))
    summary = {"sources": str(sources.resolve()), "seed": args.seed, "splits": {}}
    for split in SPLITS:
        part = speech[speech.split == split].drop(columns="split")
        part.to_csv(out / f"speech_{split}.csv", index=False)
        for kind in ("noise", "rir"):
            if (sources / f"{kind}_{split}.csv").exists():
                shutil.copyfile(sources / f"{kind}_{split}.csv", out / f"{kind}_{split}.csv")
        summary["splits"][split] = dict(
            files=len(part), languages=sorted(part.language.unique()), minutes=round(part.duration_s.sum() / 60, 1)
        )
        print(
            f"{split:5s}: {len(part)} files, {summary['splits'][split]['minutes']} min, "
            f"languages {' '.join(summary['splits'][split]['languages'])}"
        )
    (out / "sources.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
