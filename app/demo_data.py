"""Demo content: story openings and 6 continuations of each, from six deliberately different "writers".

Everything here was written for this project (no text copied from books or data sets). The
openings and the careful continuations are hand-written; the other writers' continuations are
composed from hand-written templates and word lists with a seeded random generator, so the
content is the same on every run.

The writers differ on purpose, so that Best-Worst judgements and ratings have something to find:

    demo-careful   coherent, grammatical, continues the plot of the opening
    demo-wild      creative and vivid, but drifts away from the story
    demo-offtopic  grammatical and tidy, but about something else entirely
    demo-rushed    correct but skips straight to a bare ending
    demo-flat      grammatical but dull and repetitive
    demo-broken    grammar errors and self-contradictions

`intended_rank` (1 = best) records the ordering we had in mind; annotators may well disagree
about the middle of it, which is fine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SOURCES: dict[str, dict] = {
    "demo-careful": {"intended_rank": 1, "description": "coherent, grammatical, continues the plot"},
    "demo-wild": {"intended_rank": 2, "description": "creative and vivid, but drifts away from the story"},
    "demo-rushed": {"intended_rank": 3, "description": "correct but skips straight to a bare ending"},
    "demo-flat": {"intended_rank": 4, "description": "grammatical but dull and repetitive"},
    "demo-offtopic": {"intended_rank": 5, "description": "well-formed but ignores the opening"},
    "demo-broken": {"intended_rank": 6, "description": "grammar errors and contradictions"},
}
SOURCE_NAMES: tuple[str, ...] = tuple(SOURCES)


@dataclass(frozen=True)
class StorySeed:
    """One opening plus the facts the template writers need to refer back to it."""

    text: str
    hero: str
    pronoun: str  # "he" | "she"
    place: str  # with article: "the old stone wall"
    thing: str  # with article: "the muddy footprints"
    goal: str  # infinitive phrase without "to": "find the missing carrots"
    careful: str  # the hand-written good continuation


@dataclass(frozen=True)
class DemoContinuation:
    source: str
    text: str
    template: int  # which template of the writer (-1: hand-written)


@dataclass(frozen=True)
class DemoPrompt:
    external_id: str
    text: str
    continuations: tuple[DemoContinuation, ...]


# ---------------------------------------------------------------- the openings (hand-written)

SEEDS: tuple[StorySeed, ...] = (
    StorySeed(
        "Pip the rabbit woke up to find that every carrot in the garden had vanished overnight. "
        "Only a trail of tiny muddy footprints led toward the old stone wall.",
        "Pip", "he", "the old stone wall", "the muddy footprints", "find the missing carrots",
        "Pip followed the footprints along the wall, his nose twitching. Behind a loose stone he found a "
        "family of field mice huddled around a pile of carrots. \"We were so cold and hungry,\" squeaked the "
        "smallest mouse. Pip thought for a moment, then invited them to share the garden if they helped him "
        "water it every morning.",
    ),
    StorySeed(
        "Captain Nila had flown her little silver rocket past three moons, but she had never seen a planet "
        "that hummed. As she came closer, the humming grew louder, like a song that had forgotten its words.",
        "Captain Nila", "she", "the humming planet", "her little silver rocket", "find out where the song came from",
        "Nila landed softly on a field of glassy blue grass. Each blade chimed when the wind touched it, and "
        "together they made the strange tune. She took out her harmonica and played the notes she thought "
        "were missing, and the whole field hummed along. Before she flew home, she recorded the song so the "
        "planet would never forget it again.",
    ),
    StorySeed(
        "Grandma Rosa's kitchen always smelled of cinnamon, but this morning her big wooden spoon was missing. "
        "\"Without it, the Sunday soup will never taste right,\" she sighed, and Leo promised to find it.",
        "Leo", "he", "the kitchen", "the wooden spoon", "find the wooden spoon",
        "Leo looked in the drawers, behind the bread bin and even inside the cold oven. At last he noticed "
        "the dog, Biscuit, lying very still in his basket with something long poking out from under one ear. "
        "Leo gently pulled out the spoon, washed it twice and handed it to Grandma Rosa. The soup tasted just "
        "right, and Biscuit got a small bowl of his own.",
    ),
    StorySeed(
        "It had rained for five days, and Mia was tired of looking at the grey window. "
        "Then she noticed that one raindrop was sliding up the glass instead of down.",
        "Mia", "she", "the window", "the raindrop", "follow the strange raindrop",
        "Mia pressed her nose to the window and watched the raindrop climb all the way to the top corner. "
        "There it stopped and grew bigger until she could see a tiny face inside it. \"I'm going home to the "
        "clouds,\" it whispered, \"but I wanted someone to wave goodbye.\" Mia waved, the drop floated away, "
        "and a thin line of sunshine broke through the grey sky.",
    ),
    StorySeed(
        "Teddy had been sitting on the park bench since the picnic ended, and the sun was going down. "
        "He could not walk or shout, but he could still hope that Sam would come back for him.",
        "Teddy", "he", "the park bench", "the empty picnic basket", "get back home to Sam",
        "A curious pigeon landed beside Teddy and pecked at his button eye. Just then the park keeper came by "
        "with a torch, saw the little bear and read the name tag sewn into his paw. He carried Teddy to the "
        "lost-and-found box at the gate, and the next morning Sam came running in his pyjamas to take him home.",
    ),
    StorySeed(
        "Every summer, Grandpa Joe took Ada fishing on the quiet lake behind his house. This year he handed "
        "her an old brass key and said it opened the boathouse he had never let anyone enter.",
        "Ada", "she", "the boathouse", "the brass key", "see what was inside the boathouse",
        "Ada turned the key slowly, and the heavy door creaked open. Inside, under a dusty sheet, was a small "
        "wooden boat painted yellow, with her name written on the side. \"I've been building it for you since "
        "you were born,\" Grandpa Joe said. That afternoon they rowed it across the lake together, and Ada "
        "steered all the way.",
    ),
    StorySeed(
        "Bolt was a robot gardener who watered the roses at exactly seven o'clock every morning. "
        "One day he found a small green sprout growing where no seed had ever been planted.",
        "Bolt", "he", "the rose garden", "the small green sprout", "learn what the sprout would become",
        "Bolt checked his memory files, but the sprout matched no plant he knew. He decided to care for it "
        "anyway, giving it a little water and shading it from the hottest sun. Weeks later it opened into a "
        "flower with petals the colour of his own metal shell. Bolt added a new line to his morning list: "
        "water the roses, then say hello to the silver flower.",
    ),
    StorySeed(
        "Olive the owl was supposed to stay awake all night, but she kept falling asleep as soon as the moon "
        "came out. The other owls laughed and called her Sleepy Feathers.",
        "Olive", "she", "the old oak tree", "the moon", "find a way to be useful",
        "One morning, while the other owls slept, Olive stayed up and watched the forest in daylight. She saw "
        "the squirrels racing, the bees at work and a fox cub lost near the river. She guided the cub home "
        "before anyone else was awake. From then on the forest animals asked Olive to be their daytime "
        "watcher, and nobody called her Sleepy Feathers again.",
    ),
    StorySeed(
        "The snowman in Jonah's front yard had a carrot nose, two coal eyes and a red scarf. "
        "When Jonah woke up the next morning, the scarf was still there, but the snowman was gone.",
        "Jonah", "he", "the front yard", "the red scarf", "find the snowman",
        "Jonah pulled on his boots and followed a line of round, heavy footprints down the street. They ended "
        "at the frozen pond, where the snowman stood in the middle of the ice, looking very pleased with "
        "himself. Jonah laughed and wrapped the scarf around the snowman's neck again. \"If you want to skate, "
        "you should ask first,\" he said, and he stayed to skate beside him until lunch.",
    ),
    StorySeed(
        "The little dragon Ember had a terrible cold, and every time she sneezed, bubbles came out instead of "
        "fire. The village was expecting her to light the great bonfire that very evening.",
        "Ember", "she", "the village square", "the great bonfire", "light the great bonfire",
        "Ember drank a cup of hot ginger tea from the baker, but she still sneezed bubbles. Then the children "
        "had an idea: they lit the bonfire with ordinary matches, and Ember blew bubbles over the flames. The "
        "firelight shone through every bubble, turning the square gold, pink and blue. Everyone agreed it was "
        "the most beautiful bonfire night the village had ever seen.",
    ),
    StorySeed(
        "In the corner of the town library stood a book that no one was allowed to borrow. "
        "One afternoon, when the librarian stepped out, Theo saw the book open all by itself.",
        "Theo", "he", "the library", "the forbidden book", "read the forbidden book",
        "Theo tiptoed closer and saw that the pages showed a map of the library itself. A dotted line led "
        "from the corner to the children's shelf, where a forgotten storybook had fallen behind the radiator. "
        "Theo rescued the storybook and put it back in its place. When he looked again, the strange book had "
        "closed, and its cover seemed to be smiling.",
    ),
    StorySeed(
        "A mouse named Crumb lived under the floor of the busiest bakery in town. "
        "Every night he dreamed of baking a cake of his own, even though he was smaller than a teaspoon.",
        "Crumb", "he", "the bakery", "the big mixing bowl", "bake a cake of his own",
        "One night, after the bakers had gone home, Crumb climbed onto the counter with a thimble for a bowl. "
        "He gathered a pinch of flour, a drop of honey and one blueberry he had saved. The cake he baked was "
        "no bigger than a button, but it rose perfectly. In the morning the head baker found it, laughed with "
        "delight, and left out a tiny apron for Crumb the next night.",
    ),
    StorySeed(
        "Lena's new kite was shaped like a fish, and it pulled so hard that she could barely hold the string. "
        "On the windiest day of spring, the string slipped through her fingers.",
        "Lena", "she", "the hill", "the fish kite", "get the kite back",
        "Lena ran down the hill after the kite, which swooped over the fence and the duck pond. It finally "
        "tangled in the branches of a tall apple tree in Mr. Okafor's garden. Mr. Okafor brought out his long "
        "ladder and helped her free it without tearing the tail. To say thank you, Lena let him fly the fish "
        "kite for the rest of the afternoon.",
    ),
    StorySeed(
        "Tobi the turtle wanted to see the sea, which his grandmother said was only three hills away. "
        "For a turtle, three hills was a very long journey, so he packed a lettuce leaf and set off at sunrise.",
        "Tobi", "he", "the first hill", "the lettuce leaf", "reach the sea",
        "By noon Tobi had crossed only the first hill, and his legs were tired. A friendly goose offered to "
        "carry him the rest of the way if he would share his lettuce. From high in the sky Tobi saw the sea "
        "shining like a giant blue blanket. When they landed on the warm sand, he knew the journey had been "
        "worth every slow step.",
    ),
    StorySeed(
        "On her first day at the new school, Priya did not know a single name. At lunch she sat alone with "
        "her sandwich, until a boy at the next table asked if she liked drawing dragons.",
        "Priya", "she", "the lunch table", "her sandwich", "make a friend",
        "Priya nodded and pulled out her sketchbook, which was full of dragons with striped wings. The boy, "
        "whose name was Marco, showed her his own drawings of dragons riding bicycles. By the end of lunch "
        "they had invented a whole dragon kingdom together. Walking home, Priya realised she already knew one "
        "name, and it felt like a very good start.",
    ),
    StorySeed(
        "The lighthouse keeper's cat, Marmalade, liked to sit beside the great lamp and watch the ships go by. "
        "One foggy night, the lamp flickered and went out.",
        "Marmalade", "she", "the lighthouse", "the great lamp", "keep the ships safe",
        "Marmalade raced down the spiral stairs and meowed at the keeper's door until he woke up. The keeper "
        "hurried up with a new bulb while the cat walked ahead of him in the dark. Just in time, the lamp shone "
        "again through the fog, and a small fishing boat turned safely away from the rocks. The keeper gave "
        "Marmalade an extra sardine for breakfast.",
    ),
    StorySeed(
        "Farmer Beth counted her sheep every evening, and there were always twelve. "
        "Tonight there were thirteen, and the new one was as white and fluffy as a cloud.",
        "Farmer Beth", "she", "the meadow", "the thirteenth sheep", "find out where the new sheep came from",
        "Beth walked closer and noticed that the new sheep's hooves did not quite touch the grass. It was a "
        "small cloud that had drifted too low because it felt lonely watching the flock from above. Beth let it "
        "sleep in the barn that night, and in the morning the wind came to carry it home. Every dry summer "
        "afterwards, a gentle shower fell on Beth's vegetable patch and nowhere else.",
    ),
    StorySeed(
        "Max and his sister Ivy had finally finished building their treehouse in the old maple. On the first "
        "night they slept there, they heard a knock on the trapdoor, even though they were high off the ground.",
        "Max", "he", "the treehouse", "the trapdoor", "find out who was knocking",
        "Ivy held the torch while Max slowly lifted the trapdoor. A raccoon was sitting on the top rung of the "
        "ladder with a shiny bottle cap in its paws. It seemed to be offering the cap as a welcome gift to its "
        "tree. Max and Ivy gave the raccoon a handful of crackers, and from then on it visited every evening "
        "like a polite neighbour.",
    ),
    StorySeed(
        "Coral was a young seahorse who had never swum beyond the reef. When a glass bottle drifted down and "
        "landed beside her, she saw that it held a rolled-up letter.",
        "Coral", "she", "the reef", "the glass bottle", "read the letter in the bottle",
        "Coral wrapped her tail around the bottle and pushed at the cork with her nose until it popped. The "
        "letter was from a girl on a faraway beach who asked whoever found it to write back. Coral could not "
        "write, so she tucked a tiny pink shell inside and let the bottle float up again. Months later the girl "
        "found her bottle on the sand, and she kept the shell forever.",
    ),
    StorySeed(
        "Oscar bought a red balloon at the fair, and it tugged at its string as if it wanted to go somewhere. "
        "When he let it lead the way, it pulled him toward an old carousel that had stopped turning years ago.",
        "Oscar", "he", "the old carousel", "the red balloon", "find out where the balloon wanted to go",
        "The balloon floated up and tied itself to a wooden horse with a chipped golden mane. As soon as it "
        "did, the carousel creaked and began to turn, and soft music filled the air. Oscar climbed onto the "
        "horse and rode three slow circles under the evening lights. When the music stopped, the balloon "
        "drifted back into his hand, as if to say it was time to go home.",
    ),
    StorySeed(
        "Hazel the hedgehog was supposed to sleep all winter, but the first snow woke her up in the middle of "
        "December. Everyone she knew was still asleep, and the forest was very quiet.",
        "Hazel", "she", "the snowy forest", "the first snow", "find something to do until spring",
        "Hazel wrapped herself in a dry leaf and went out to see what winter looked like. She met a robin who "
        "was also awake and who showed her where the last red berries grew. Together they built a tiny snow "
        "hedgehog beside the frozen stream. When Hazel finally yawned and curled up again, she dreamed about "
        "snow until spring came.",
    ),
    StorySeed(
        "Ruby found a box of chalk on the pavement outside her house, and the label said, \"Draw carefully.\" "
        "She drew a door on the garden wall, just for fun, and the door began to open.",
        "Ruby", "she", "the garden wall", "the box of chalk", "find out what was behind the door",
        "Behind the door was the same garden, but everything in it was drawn in bright chalk colours. A chalk "
        "butterfly landed on her hand and left a smudge of yellow on her finger. Ruby remembered the label, so "
        "she drew only a bench and sat on it to watch the chalk flowers sway. Before the sun set, she stepped "
        "back through the door and carefully rubbed it out with her sleeve.",
    ),
    StorySeed(
        "Mr. Patel drove the number 9 bus through the city every day, and he knew every passenger by name. "
        "One Monday, a penguin climbed aboard and held out a ticket.",
        "Mr. Patel", "he", "the number 9 bus", "the ticket", "help the penguin get where it was going",
        "Mr. Patel checked the ticket, which was for the stop outside the city aquarium. He smiled, tipped his "
        "cap and let the penguin sit in the front seat, where the air was coolest. At the aquarium a worried "
        "keeper was waiting at the bus stop with a bucket of fish. The next morning Mr. Patel found a thank-you "
        "card with a flipper print on his seat.",
    ),
    StorySeed(
        "Nora's great-aunt left her a music box that played only when it rained. "
        "Nora could not remember the last rain, because the town had been dry all summer.",
        "Nora", "she", "her bedroom", "the music box", "hear the music box play",
        "Nora wound the little key anyway and set the music box on her windowsill. For a moment nothing "
        "happened, and then a single note rang out, thin and hopeful. Far away, thunder answered it, and soon "
        "the first drops tapped on the dusty roof. Nora listened to the whole song while the town's gardens "
        "drank the rain.",
    ),
    StorySeed(
        "A tiny ant named Dot was carrying a crumb much bigger than herself across the kitchen floor. "
        "Halfway home, she saw the shadow of a broom sweeping toward her.",
        "Dot", "she", "the kitchen floor", "the crumb", "get the crumb home safely",
        "Dot did not drop the crumb; she ducked under the edge of the rug and held her breath. The broom swept "
        "past, pushing dust and a lost button, but it missed her hiding place. When the kitchen was quiet again, "
        "she crept along the wall to the crack near the door. Her family cheered when she arrived, and the crumb "
        "fed them all for three days.",
    ),
    StorySeed(
        "Sir Barnaby was the bravest knight in the kingdom, except for one secret: he was afraid of the dark. "
        "When the princess asked him to guard the castle on the longest night of the year, he did not know what "
        "to say.",
        "Sir Barnaby", "he", "the castle", "his lantern", "guard the castle all night",
        "Sir Barnaby said yes, but he brought three lanterns and a very long candle. Halfway through the night, "
        "the princess came up to the walls with a blanket and admitted that she was afraid of the dark too. They "
        "sat together and named the stars until the sky turned pink. In the morning the king thanked them both "
        "for keeping the castle safe.",
    ),
    StorySeed(
        "After the storm, the street outside Ali's house became a fast little river. He folded a paper boat "
        "from an old newspaper, wrote his name on the sail and set it on the water.",
        "Ali", "he", "the street", "the paper boat", "follow the paper boat",
        "The boat spun around a lamppost and raced past the bakery, with Ali running beside it. At the corner it "
        "slipped into a drain, and Ali thought it was gone for good. But the next day his neighbour, Mrs. Chen, "
        "knocked on the door holding a soggy boat with his name on it. She had found it in the park pond, "
        "sailing proudly among the ducks.",
    ),
    StorySeed(
        "Gita the elephant loved to dance, but every time she tried, the ground shook and the birds flew away. "
        "She wished she could dance without frightening anyone.",
        "Gita", "she", "the dusty plain", "the shaking ground", "dance without frightening anyone",
        "One evening Gita went down to the river and stepped into the shallow water. She swayed and twirled, and "
        "the water splashed softly instead of the ground shaking. The birds came back to watch, and the frogs "
        "began to sing along. After that the river became Gita's dance floor, and every sunset the animals came "
        "to see her show.",
    ),
    StorySeed(
        "In Mr. Finch's clock shop, every clock ticked at the same time, except for one small cuckoo clock in the "
        "window. It was always exactly five minutes late, and no one could fix it.",
        "Mr. Finch", "he", "the clock shop", "the cuckoo clock", "find out why the clock was late",
        "Mr. Finch opened the back of the clock and found a tiny nest tucked between the gears. Every hour the "
        "wooden cuckoo waited five minutes before popping out, so that it would not wake the sleeping sparrow "
        "chicks. Mr. Finch closed the clock gently and put a new sign in the window. It said: \"This clock is "
        "late on purpose, and that is fine.\"",
    ),
    StorySeed(
        "One night a small star fell from the sky and landed in Emma's vegetable garden. "
        "It was glowing softly between the cabbages, and it looked frightened.",
        "Emma", "she", "the vegetable garden", "the little star", "help the star get back to the sky",
        "Emma wrapped the star in her scarf and carried it to the top of the tallest hill. She tried throwing it "
        "upwards, but it fell back into her hands, dimmer than before. Then she remembered the rockets left over "
        "from the summer fair, and her father helped her tie the star to one with a ribbon. With a whoosh and a "
        "sparkle the star rose into the sky, and it has twinkled over her garden ever since.",
    ),
)

# ---------------------------------------------------------------- the template writers (hand-written)

WILD = (
    "Instead of trying to {goal}, {hero} followed {creature} who was humming {song}. They walked until "
    "{place} turned into {wplace}, where the rivers ran uphill and the stones told jokes. By the time the "
    "moon came out, {hero} had forgotten all about {thing} and was learning to {skill}.",
    "Just then, {thing} began to glow and whispered a recipe for {food}. {hero} cooked it in a pot borrowed "
    "from {creature}, and the smell was so strong that it painted the clouds purple. Nobody ever found out "
    "what happened next, because the clouds started a band and went on tour.",
    "{hero} decided that the best way to {goal} was to build a machine out of {material}. The machine did not "
    "help at all, but it could sing lullabies backwards and fold the wind into paper cranes. Soon there were "
    "cranes everywhere, and {hero} opened a tiny shop selling them to {creatures}.",
    "At that moment, the whole of {place} tipped sideways like a teacup, and {hero} slid all the way into "
    "{wplace}. There, a council of {creatures} was voting on whether Thursdays should be allowed to rhyme. "
    "{hero} voted yes, which is why Thursdays still sound a little musical today.",
    "{hero} closed {his} eyes and wished very hard, and when {he} opened them, {he} was no bigger than a grain "
    "of pepper. From down there, {thing} looked like a mountain and the grass looked like a forest of green "
    "swords. {He} made friends with a ladybird who was writing a book about {topic}, and the two of them spent "
    "the rest of the day arguing about the title.",
    "Far above {place}, {creature} was painting the sky with a brush as long as a bus. {hero} waved, and a drop "
    "of paint the colour of {colour} fell right onto {thing}. From then on it hummed softly whenever someone "
    "told a lie, and {hero} became the most popular guest at every birthday party in the land of {wplace_short}.",
)
WILD_WORDS = {
    "creature": ("a giraffe in a yellow raincoat", "a very polite octopus", "a moth who collected doorbells",
                 "a snail on roller skates", "a purple walrus with a monocle", "a teapot with tiny legs"),
    "creatures": ("grumpy teaspoons", "retired pirates", "thoughtful pigeons", "very small volcanoes",
                  "sleepy lighthouses", "singing potatoes"),
    "wplace": ("a city made of marmalade", "the inside of a yawning whale", "a library where the books read you",
               "the basement of the moon", "a desert of blue sugar", "a forest where the trees wore hats"),
    "wplace_short": ("Marmalade Town", "Upside-Down Hill", "Sugar Dunes", "Hatwood", "Moonbasement", "Puddleton"),
    "song": ("a song about broccoli", "a lullaby for sleepy mountains", "the anthem of the Pudding Islands",
             "a march for left-handed spoons", "a waltz for shy clouds"),
    "skill": ("juggle thunderclouds", "speak fluent hiccup", "knit with spaghetti",
              "ride a bicycle made of soap bubbles", "whistle in seven colours"),
    "food": ("moonlight pancakes", "thunder soup", "a pie that tasted like next Tuesday",
             "jam made from old birthday wishes", "crispy fog"),
    "material": ("old umbrellas and birthday candles", "spoons, string and one very brave cucumber",
                 "forty-two buttons and a harmonica", "pillow feathers and a broken clock"),
    "topic": ("the secret lives of clouds", "why puddles are shy", "the history of buttons",
              "famous snails of the past", "what the wind eats for breakfast"),
    "colour": ("a thunderstorm", "burnt toast", "a dragon's sneeze", "the inside of a seashell", "midnight jam"),
}

FLAT = (
    "{hero} wanted to {goal}. {He} went to {place}. {He} looked at {thing}. It was nice. Then {he} went home, "
    "and it was a good day.",
    "{hero} thought about {thing}. {He} thought about it for a long time. Then {he} thought about it some more. "
    "In the end {he} decided it was fine.",
    "{hero} went to {place}. {Place} was there. {hero} was there too. {hero} stayed there for a while, and then "
    "{he} left.",
    "It was a normal day. {hero} saw {thing}. {hero} said, \"That is {thing}.\" Then {hero} had lunch, and after "
    "lunch {he} had a nap.",
    "{hero} tried to {goal}. {He} tried and tried. {He} tried again. After that, everything was the same as before.",
    "{hero} was at {place}. It was a place. {hero} liked it. {hero} liked it a lot, so {he} stayed and did not do "
    "very much.",
)

RUSHED = (
    "{hero} managed to {goal} very quickly. Everyone was happy, and that was the end.",
    "In the end, {hero} was able to {goal}. The end.",
    "{hero} did not worry for long. {He} was able to {goal}, and then {he} went to bed.",
    "Luckily, it all turned out to be easy. {hero} got to {goal} before dinner, and nothing else happened.",
)

OFFTOPIC = (
    "The next morning the mayor announced that the town fountain would be painted green. Some people liked the "
    "idea, and others wrote long letters to the newspaper. In the end it was painted green on one side and blue "
    "on the other, and {hero}'s neighbours agreed to stop arguing about it.",
    "Meanwhile, on the other side of the world, a fisherman who had never heard of {hero} mended his nets and "
    "counted the waves. He had counted them every day for forty years and had never once lost track. "
    "Today the number was eleven thousand and two, which he wrote carefully in his blue notebook.",
    "The history of bread is longer than most people think. Long ago, people ground grain between two stones "
    "and baked flat loaves on hot rocks. Today there are hundreds of kinds of bread, and {hero}'s favourite "
    "was never mentioned in any of the books.",
    "Football practice was cancelled on Wednesday because the field was being mowed. The coach sent a message "
    "to all the parents, and most of them were glad to have a free afternoon. {hero}'s cousin used the time "
    "to tidy his sock drawer.",
    "Trains are one of the safest ways to travel, and many of them run on electricity. Some of the fastest "
    "trains can cross a whole country in a few hours. {hero} had once read that the longest railway line is "
    "so long that the journey takes more than a week.",
    "{hero}'s Aunt Margaret had always wanted a greenhouse, so she ordered one from a catalogue. It arrived in "
    "fourteen boxes with instructions in very small print. It took her the whole summer to build it, and by "
    "then it was too late to plant tomatoes.",
)

BROKEN = (
    "{hero} go to {place} but {he} never goed there, because {he} was already at it. {Thing} were not there and "
    "also it was there, so {he} are happy and sad. Then {he} {goal} yesterday tomorrow.",
    "After that {hero} runned very fastly to {place}, it were dark but the sun shined bright. {He} picked up "
    "{thing} with {his} no hands and then {he} didnt had it no more.",
    "{hero} is forgeting what {he} doing. {Him} say \"i must to {goal}\" but then {he} decide not to, and then "
    "{he} done it already before. Everybody were cheering although nobody was there.",
    "{hero} were very tired so {he} jump up and run around {place} all night in the morning. {He} didn't never "
    "wanted to {goal}, which is why {he} wanted to it so much. The end, and then it start.",
    "Suddenly {hero} was a different person named {other}, and {other} had always lived at {place} since {he} "
    "arrived five minute ago. {Thing} was gone, but {he} was holding it. They was all best friend, expect for "
    "the ones who wasnt.",
    "Then the {thing_noun} it said to {hero} that {he} can not {goal} because it is too big and also too small. "
    "{hero} dont listen and {he} goes to sleeping. When {he} waked up it was still night and nothing was happen, "
    "but everything was different.",
)
OTHER_NAMES = ("Gerald", "Bettina", "Frank", "Lulu", "Oswald", "Penny")

PRONOUNS = {"he": ("he", "him", "his"), "she": ("she", "her", "her")}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, seed: StorySeed, rng: random.Random) -> str:
    he, him, his = PRONOUNS[seed.pronoun]
    words = {key: rng.choice(options) for key, options in WILD_WORDS.items()}
    first, _, rest = seed.thing.partition(" ")
    thing_noun = rest if first in ("the", "her", "his") else seed.thing
    return template.format(
        hero=seed.hero, he=he, him=him, his=his, He=_cap(he), Him=_cap(him), His=_cap(his),
        place=seed.place, Place=_cap(seed.place), thing=seed.thing, Thing=_cap(seed.thing),
        thing_noun=thing_noun, goal=seed.goal, other=rng.choice(OTHER_NAMES), **words,
    )


_TEMPLATES = {
    "demo-wild": WILD,
    "demo-rushed": RUSHED,
    "demo-flat": FLAT,
    "demo-offtopic": OFFTOPIC,
    "demo-broken": BROKEN,
}


def demo_prompts() -> list[DemoPrompt]:
    """All demo prompts with their continuations, in source order; deterministic."""
    prompts = []
    for index, seed in enumerate(SEEDS):
        rng = random.Random(f"storyloop-demo-{index}")
        continuations = [DemoContinuation("demo-careful", seed.careful, -1)]
        for shift, (source, templates) in enumerate(_TEMPLATES.items()):
            # Rotate through each writer's templates so all of them get used about equally, shifted
            # per writer so that one prompt doesn't get "template 0" from everybody.
            choice = (index + 2 * shift) % len(templates)
            continuations.append(DemoContinuation(source, _fill(templates[choice], seed, rng), choice))
        order = {name: i for i, name in enumerate(SOURCE_NAMES)}
        continuations.sort(key=lambda c: order[c.source])
        prompts.append(DemoPrompt(f"demo-{index + 1:03d}", seed.text, tuple(continuations)))
    return prompts
